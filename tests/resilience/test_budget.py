"""RetryBudget: retries stay within a share of requests plus a reserve, over a sliding window."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from resilkit import HYPOTHESIS, FakeClock

from rag_llm.errors import ConfigError
from rag_llm.resilience import BudgetPolicy, RetryBudget

# Each step: advance the clock by a number of seconds, then deposit or withdraw.
STEPS = st.lists(st.tuples(st.floats(0, 3), st.sampled_from(["deposit", "withdraw"])),
                 max_size=300)


def budget(clock: FakeClock, **settings: float) -> RetryBudget:
    return RetryBudget(BudgetPolicy(**settings), clock=clock)


def test_a_fresh_budget_allows_the_reserve_of_min_retries_per_second_times_window() -> None:
    retries = budget(FakeClock(), min_retries_per_second=2.0, window=5.0)
    assert retries.available() == 10
    assert sum(retries.try_withdraw() for _ in range(20)) == 10


def test_each_request_adds_percent_can_retry_of_a_retry() -> None:
    retries = budget(FakeClock(), percent_can_retry=0.2, min_retries_per_second=0.0)
    assert not retries.try_withdraw()
    for _ in range(10):
        retries.deposit()
    assert [retries.try_withdraw() for _ in range(3)] == [True, True, False]


def test_deposits_and_withdrawals_leave_the_window() -> None:
    clock = FakeClock()
    retries = budget(clock, percent_can_retry=0.5, min_retries_per_second=0.0, window=10.0)
    for _ in range(4):
        retries.deposit()
    assert retries.try_withdraw()
    assert retries.try_withdraw()
    assert not retries.try_withdraw()
    clock.advance(10.0)
    assert retries.available() == 0
    retries.deposit()
    retries.deposit()
    assert retries.try_withdraw()


def retries_in_window(times: Sequence[float], end: float, window: float) -> int:
    return sum(1 for t in times if end - window < t <= end)


@given(steps=STEPS, percent=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
       floor=st.sampled_from([0.0, 0.5, 1.0, 10.0]), window=st.sampled_from([1.0, 10.0]))
@HYPOTHESIS
def test_granted_retries_never_exceed_percent_of_requests_plus_the_floor(
    steps: list[tuple[float, str]], percent: float, floor: float, window: float
) -> None:
    clock = FakeClock()
    retries = budget(clock, percent_can_retry=percent, min_retries_per_second=floor,
                     window=window)
    deposits: list[float] = []
    grants: list[float] = []
    for pause, action in steps:
        clock.advance(pause)
        if action == "deposit":
            retries.deposit()
            deposits.append(clock.now)
        elif retries.try_withdraw():
            grants.append(clock.now)
            # Over the window that ends at this grant, the budget's promise holds exactly.
            requests = retries_in_window(deposits, clock.now, window)
            assert retries_in_window(grants, clock.now, window) <= (
                floor * window + percent * requests)
    if steps and sum(p for p, _ in steps) < window:
        assert len(grants) <= floor * window + percent * len(deposits)


def outage(rate: int, seconds: int, policy: BudgetPolicy, max_attempts: int) -> float:
    """Attempts per call when every call fails and retries while the budget allows."""
    clock = FakeClock()
    retries = RetryBudget(policy, clock=clock)
    calls = attempts = 0
    for _ in range(rate * seconds):
        clock.advance(1.0 / rate)
        retries.deposit()
        calls += 1
        attempts += 1
        for _ in range(max_attempts - 1):
            if not retries.try_withdraw():
                break
            attempts += 1
    return attempts / calls


def test_in_a_total_outage_attempts_per_call_stay_near_one_plus_percent() -> None:
    ratio = outage(rate=1000, seconds=30, policy=BudgetPolicy(), max_attempts=3)
    assert ratio <= 1.25
    assert ratio == pytest.approx(1.2 + 10 / 1000, abs=0.02)


@given(rate=st.integers(200, 2000), max_attempts=st.integers(2, 10))
@settings(HYPOTHESIS, max_examples=10)
def test_outage_amplification_is_bounded_at_any_request_rate(rate: int, max_attempts: int) -> None:
    policy = BudgetPolicy()
    reserve_share = policy.min_retries_per_second / rate
    # The first window also spends the reserve once more: allow for it over 20 s.
    bound = 1 + policy.percent_can_retry + reserve_share * (1 + policy.window / 20)
    assert outage(rate, 20, policy, max_attempts) <= bound


def test_threads_sharing_a_budget_never_overdraw_it() -> None:
    retries = RetryBudget(BudgetPolicy(percent_can_retry=0.1, min_retries_per_second=1.0),
                          clock=lambda: 5.0)
    granted: list[int] = []

    def worker() -> None:
        count = 0
        for _ in range(2000):
            retries.deposit()
            count += retries.try_withdraw()
        granted.append(count)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) <= 10 + 0.1 * 16000


@pytest.mark.parametrize(("field", "value"), [
    ("percent_can_retry", -0.1), ("window", 0.0), ("min_retries_per_second", -1.0),
    ("window", "10"),
])
def test_bad_settings_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        BudgetPolicy(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
