"""CircuitBreaker: when it opens, how long, the single half-open probe, and 429 cool-downs."""

from __future__ import annotations

import asyncio

import pytest
from resilkit import FakeClock

from rag_llm import errors
from rag_llm.errors import ConfigError
from rag_llm.resilience import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Permit,
    Transition,
    classify_outcome,
)

WHERE = {"provider": "openai", "endpoint": "http://127.0.0.1:9/v1/chat/completions"}
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def permit(breaker: CircuitBreaker) -> Permit:
    granted = breaker.allow()
    assert granted is not None
    return granted


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        permit(breaker).failure()


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        permit(breaker).success()


def opened(clock: FakeClock, **settings: float) -> CircuitBreaker:
    breaker = CircuitBreaker(BreakerPolicy(**settings), clock=clock)  # type: ignore[arg-type]
    fail(breaker, breaker.policy.consecutive_failures)
    assert breaker.state is OPEN
    return breaker


def rate_limited(retry_after: float | None) -> errors.RateLimitError:
    return errors.RateLimitError(status=429, message="slow", retry_after=retry_after, **WHERE)


def test_opens_after_five_consecutive_failures() -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    fail(breaker, 4)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN
    assert breaker.allow() is None


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(BreakerPolicy(ratio_min_calls=1000), clock=FakeClock())
    for _ in range(10):
        fail(breaker, 4)
        succeed(breaker)
    assert breaker.state is CLOSED


def test_opens_on_the_failure_ratio_once_the_window_holds_enough_calls() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(ratio_min_calls=20), clock=clock)
    for _ in range(9):
        fail(breaker)
        succeed(breaker)
    succeed(breaker)
    assert breaker.state is CLOSED  # 9 of 19: below the minimum number of calls
    fail(breaker)
    assert breaker.state is OPEN  # 10 of 20


def test_failures_older_than_the_ratio_window_are_forgotten() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(ratio_window=10.0, ratio_min_calls=20), clock=clock)
    for _ in range(10):
        fail(breaker)
        succeed(breaker)
        clock.advance(1.0)
    assert breaker.snapshot().window_calls < 20
    assert breaker.state is CLOSED


def test_stays_open_for_open_duration_then_lets_one_probe_through() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    assert breaker.open_until == clock.now + 30.0
    clock.advance(29.9)
    assert breaker.allow() is None
    clock.advance(0.1)
    probe = breaker.allow()
    assert probe is not None
    assert probe.probe
    assert breaker.state is HALF_OPEN
    assert breaker.allow() is None  # a second caller is turned away fast


def test_a_probe_success_closes_and_a_probe_failure_reopens() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(30.0)
    permit(breaker).failure()
    assert breaker.state is OPEN
    clock.advance(60.0)
    permit(breaker).success()
    assert breaker.state is CLOSED
    assert breaker.allow() is not None


def test_open_duration_grows_with_each_opening_and_is_capped() -> None:
    clock = FakeClock()
    breaker = opened(clock, open_duration=30.0, max_open_duration=100.0)
    durations = []
    for _ in range(5):
        until = breaker.open_until
        assert until is not None
        durations.append(until - clock.now)
        clock.advance(until - clock.now)
        permit(breaker).failure()
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0]


def test_the_opening_count_heals_while_the_breaker_stays_closed() -> None:
    clock = FakeClock()
    breaker = opened(clock, open_duration=30.0)
    clock.advance(30.0)
    permit(breaker).failure()  # opened twice: 60 s
    clock.advance(60.0)
    permit(breaker).success()
    clock.advance(30.0)  # one step healed
    fail(breaker, 5)
    assert breaker.open_until == clock.now + 60.0
    clock.advance(60.0)
    permit(breaker).success()
    clock.advance(300.0)
    fail(breaker, 5)
    assert breaker.open_until == clock.now + 30.0


def test_a_released_probe_frees_the_slot_without_a_verdict() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(30.0)
    permit(breaker).release()
    assert breaker.state is HALF_OPEN
    assert permit(breaker).probe


async def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(30.0)

    async def call() -> None:
        with permit(breaker):
            await asyncio.sleep(3600)

    task = asyncio.create_task(call())
    await asyncio.sleep(0)
    assert breaker.allow() is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN
    assert permit(breaker).probe


def test_the_context_manager_records_the_call_result() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1), clock=FakeClock())
    with pytest.raises(errors.ServerError), permit(breaker):
        raise errors.ServerError(status=503, message="down", **WHERE)
    assert breaker.state is OPEN


def test_a_lost_probe_is_replaced_after_probe_timeout() -> None:
    clock = FakeClock()
    breaker = opened(clock, probe_timeout=20.0)
    clock.advance(30.0)
    lost = permit(breaker)
    clock.advance(19.0)
    assert breaker.allow() is None
    clock.advance(1.0)
    replacement = permit(breaker)
    lost.failure()  # too late to count
    assert breaker.state is HALF_OPEN
    replacement.success()
    assert breaker.state is CLOSED


def test_a_permit_settles_once() -> None:
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=2), clock=FakeClock())
    granted = permit(breaker)
    granted.failure()
    granted.failure()
    assert breaker.state is CLOSED
    assert granted.settled


def test_results_of_calls_begun_before_a_transition_are_ignored() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    slow = permit(breaker)
    fail(breaker, 5)
    clock.advance(30.0)
    assert breaker.state is HALF_OPEN
    slow.success()  # from the closed era: must not close the breaker
    assert breaker.state is HALF_OPEN


def test_a_429_cools_the_endpoint_until_retry_after_without_counting_a_failure() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(consecutive_failures=1), clock=clock)
    assert permit(breaker).record(rate_limited(12.0)) is Outcome.RATE_LIMITED
    assert breaker.state is CLOSED
    assert breaker.allow() is None
    assert breaker.retry_at == clock.now + 12.0
    clock.advance(12.0)
    assert breaker.allow() is not None


def test_a_429_without_retry_after_cools_briefly_and_a_huge_one_is_capped() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(default_cool_down=1.0, max_cool_down=60.0),
                             clock=clock)
    permit(breaker).record(rate_limited(None))
    assert breaker.retry_at == clock.now + 1.0
    clock.advance(1.0)
    permit(breaker).record(rate_limited(86400.0))
    assert breaker.retry_at == clock.now + 60.0


def test_cool_down_never_shortens_an_earlier_one() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.cool_down(clock.now + 10.0)
    breaker.cool_down(clock.now + 5.0)
    assert breaker.retry_at == clock.now + 10.0
    assert not breaker.available


def test_retry_at_says_when_an_open_breaker_tries_again() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    assert breaker.retry_at == clock.now + 30.0
    breaker.cool_down(clock.now + 45.0)
    assert breaker.retry_at == clock.now + 45.0
    clock.advance(45.0)
    assert breaker.retry_at is None
    assert breaker.available


def test_rejections_never_count_as_failures() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    for _ in range(100):
        assert breaker.allow() is None
    clock.advance(30.0)
    probe = permit(breaker)
    for _ in range(100):
        assert breaker.allow() is None
    probe.success()
    assert breaker.snapshot().consecutive_failures == 0


@pytest.mark.parametrize(("exc", "outcome"), [
    (None, Outcome.SUCCESS),
    (errors.ServerError(status=502, message="", **WHERE), Outcome.FAILURE),
    (errors.ConnectError("refused", **WHERE), Outcome.FAILURE),
    (errors.ReadTimeoutError("slow", **WHERE), Outcome.FAILURE),
    (errors.ConnectionLostError("reset", **WHERE), Outcome.FAILURE),
    (errors.MalformedResponseError(detail="?", **WHERE), Outcome.FAILURE),
    (errors.UpstreamError(status=400, message="", **WHERE), Outcome.SUCCESS),
    (errors.AuthenticationError(status=401, message="", **WHERE), Outcome.SUCCESS),
    (errors.RateLimitError(status=429, message="", provider="p", endpoint="e"),
     Outcome.RATE_LIMITED),
    (errors.PoolTimeoutError("full", **WHERE), Outcome.IGNORED),
    (asyncio.CancelledError(), Outcome.IGNORED),
    (ValueError("our bug"), Outcome.IGNORED),
])
def test_outcomes_follow_envoy_5xx_and_local_origin_failures(
    exc: BaseException | None, outcome: Outcome
) -> None:
    assert classify_outcome(exc) is outcome


def test_transitions_are_reported_after_the_lock_is_released() -> None:
    clock = FakeClock()
    seen: list[Transition] = []
    breaker: CircuitBreaker

    def listener(transition: Transition) -> None:
        seen.append(transition)
        assert breaker.state is transition.new  # would deadlock if called under the lock

    breaker = CircuitBreaker(clock=clock, on_transition=listener)
    fail(breaker, 5)
    clock.advance(30.0)
    permit(breaker).success()
    assert [(t.old, t.new) for t in seen] == [(CLOSED, OPEN), (OPEN, HALF_OPEN),
                                              (HALF_OPEN, CLOSED)]
    assert seen[0].open_until == seen[0].at + 30.0


def test_a_failing_listener_does_not_cost_the_caller_its_permit() -> None:
    clock = FakeClock()

    def listener(transition: Transition) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker(clock=clock, on_transition=listener)
    fail(breaker, 5)
    clock.advance(30.0)
    assert permit(breaker).probe


@pytest.mark.parametrize(("field", "value"), [
    ("consecutive_failures", 0), ("failure_ratio", 0.0), ("failure_ratio", 1.5),
    ("ratio_window", 0.0), ("ratio_min_calls", 0), ("open_duration", 0.0),
    ("max_open_duration", 10.0), ("probe_timeout", -1.0), ("max_cool_down", float("inf")),
])
def test_bad_settings_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        BreakerPolicy(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
