"""The adaptive concurrency limit: AIMD steps, bounds, cooldown, and the admission gate."""

from __future__ import annotations

import asyncio

import pytest

from rag_llm.errors import ConfigError
from rag_llm.resilience import AdaptiveLimit, AdaptivePolicy, AdmissionGate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_grows_by_one_per_full_window_only_while_half_of_it_is_used() -> None:
    limit = AdaptiveLimit(AdaptivePolicy(max_limit=50, initial_limit=10), clock=FakeClock())
    for _ in range(10):  # one window of successes
        limit.record(in_flight=10, dropped=False, started=0)
    assert limit.limit == 10  # 10 x 1/10 lands just short of 11 in floating point, or on it
    limit.record(in_flight=10, dropped=False, started=0)
    assert limit.limit == 11
    before = limit.limit
    for _ in range(100):
        limit.record(in_flight=2, dropped=False, started=0)  # idle room proves nothing
    assert limit.limit == before
    for _ in range(5000):
        limit.record(in_flight=50, dropped=False, started=0)
    assert limit.limit == 50  # bounded by max_limit (max_connections)


def test_drops_of_one_moment_back_off_once_and_never_below_the_floor() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(AdaptivePolicy(max_limit=100, initial_limit=40, min_limit=2),
                          clock=clock)
    started = clock.now
    clock.now += 0.01
    assert limit.record(in_flight=40, dropped=True, started=started) == 36
    # Calls that were already running when the limit was cut report the same overload.
    assert limit.record(in_flight=40, dropped=True, started=started) == 36
    clock.now += 0.01
    assert limit.record(in_flight=36, dropped=True, started=clock.now) == 32
    for _ in range(100):
        clock.now += 1
        limit.record(in_flight=1, dropped=True, started=clock.now)
    assert limit.limit == 2


@pytest.mark.parametrize(("field", "value"), [
    ("min_limit", 0), ("backoff_ratio", 1.0), ("backoff_ratio", 0)])
def test_bad_policies_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        AdaptivePolicy(max_limit=10, **{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_the_gate_admits_up_to_the_limit_first_come_first_served() -> None:
    gate = AdmissionGate(AdaptiveLimit(AdaptivePolicy(max_limit=2, initial_limit=2)))
    await gate.acquire()
    await gate.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.acquire()
        order.append(i)

    waiters = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert order == []
    assert gate.in_flight == 2
    gate.release(dropped=False, started=0)
    await asyncio.sleep(0)
    assert order == [0]
    gate.release(dropped=False, started=0)
    gate.release(dropped=False, started=0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert gate.in_flight == 2


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    gate = AdmissionGate(AdaptiveLimit(AdaptivePolicy(max_limit=1, initial_limit=1)))
    await gate.acquire()
    doomed = asyncio.create_task(gate.acquire())
    kept = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    doomed.cancel()
    gate.release(dropped=False, started=0)
    await kept
    assert doomed.cancelled()
    assert gate.in_flight == 1
