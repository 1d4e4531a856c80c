"""RetryPolicy and RetryState: what is retried, how long it waits, and when it gives up."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilkit import HYPOTHESIS, FakeClock, FixedRandom

from rag_llm import errors
from rag_llm.errors import ConfigError
from rag_llm.resilience import (
    BudgetPolicy,
    RetryBudget,
    RetryPolicy,
    RetryState,
    RetryVerdict,
    is_retryable,
)

WHERE = {"provider": "openai", "endpoint": "http://127.0.0.1:9/v1/embeddings"}
LONGEST = FixedRandom(0.999999)


def upstream(status: int, **extra: object) -> errors.UpstreamError:
    if status == 429:
        return errors.RateLimitError(status=429, message="slow down", **WHERE,
                                     retry_after=extra.get("retry_after"))  # type: ignore[arg-type]
    kind = errors.ServerError if status >= 500 else errors.UpstreamError
    return kind(status=status, message="x", **WHERE)


def transport(kind: type[errors.TransportError]) -> errors.TransportError:
    return kind("failed", **WHERE)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retryable(status: int) -> None:
    assert is_retryable(upstream(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_are_never_retried(status: int) -> None:
    exc = (errors.AuthenticationError(status=status, message="no", **WHERE)
           if status in (401, 403) else upstream(status))
    decision = RetryState().decide(exc, rng=LONGEST)
    assert not is_retryable(exc)
    assert decision.verdict is RetryVerdict.NOT_RETRYABLE
    assert str(status) in decision.reason


@pytest.mark.parametrize("kind", [errors.ConnectError, errors.ConnectTimeoutError,
                                  errors.ConnectionLostError, errors.ReadTimeoutError,
                                  errors.WriteTimeoutError])
def test_connection_failures_and_timeouts_are_retryable(kind: type[errors.TransportError]) -> None:
    assert is_retryable(transport(kind))


def test_read_timeouts_are_not_retried_when_retry_timeouts_is_off() -> None:
    policy = RetryPolicy(retry_timeouts=False)
    assert not is_retryable(transport(errors.ReadTimeoutError), policy)
    assert is_retryable(transport(errors.ConnectTimeoutError), policy)


def test_an_exhausted_local_pool_is_not_retried() -> None:
    decision = RetryState().decide(transport(errors.PoolTimeoutError))
    assert decision.verdict is RetryVerdict.NOT_RETRYABLE
    assert "max_connections" in decision.reason


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt()])
def test_cancellation_is_never_retried(exc: BaseException) -> None:
    decision = RetryState().decide(exc)
    assert decision.verdict is RetryVerdict.CANCELLED
    assert not decision.retry
    assert not is_retryable(exc)


@pytest.mark.parametrize("exc", [ValueError("bug"), TimeoutError(),
                                 errors.MalformedResponseError(detail="?", **WHERE)])
def test_errors_that_are_not_transient_are_not_retried(exc: Exception) -> None:
    assert RetryState().decide(exc).verdict is RetryVerdict.NOT_RETRYABLE


def test_backoff_ceiling_doubles_from_base_delay_up_to_max_delay() -> None:
    policy = RetryPolicy()
    assert [policy.backoff_ceiling(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert policy.backoff_ceiling(10_000) == 8.0


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10)
    exc = upstream(503)
    state = RetryState(policy, attempt=3)
    assert state.decide(exc, rng=FixedRandom(0.0)).delay == 0.0
    assert state.decide(exc, rng=FixedRandom(0.5)).delay == pytest.approx(1.0)
    assert state.decide(exc, rng=LONGEST).delay == pytest.approx(2.0, rel=1e-5)


@given(attempt=st.integers(1, 40), draw=st.floats(0, 1, exclude_max=True),
       remaining=st.none() | st.floats(0, 100))
@HYPOTHESIS
def test_a_retry_never_waits_past_the_ceiling_or_the_deadline(
    attempt: int, draw: float, remaining: float | None
) -> None:
    policy = RetryPolicy(max_attempts=50)
    decision = RetryState(policy, attempt).decide(
        upstream(500), remaining=remaining, rng=FixedRandom(draw))
    if decision.retry:
        assert 0.0 <= decision.delay <= policy.backoff_ceiling(attempt)
        assert remaining is None or decision.delay < remaining
    else:
        assert decision.verdict is RetryVerdict.DEADLINE


def test_retry_after_replaces_the_backoff() -> None:
    decision = RetryState().decide(upstream(429, retry_after=3.5), rng=LONGEST)
    assert decision.retry
    assert decision.delay == 3.5
    assert "Retry-After" in decision.reason


def test_retry_after_is_clamped_to_the_cap() -> None:
    decision = RetryState(RetryPolicy(retry_after_cap=20.0)).decide(
        upstream(429, retry_after=3600.0))
    assert decision.retry
    assert decision.delay == 20.0
    assert "capped" in decision.reason


def test_retry_after_on_any_error_is_honoured() -> None:
    exc = errors.ServerError(status=503, message="busy", retry_after=7.0, **WHERE)
    assert RetryState().decide(exc, rng=LONGEST).delay == 7.0


def test_a_wait_beyond_the_deadline_gives_up_now() -> None:
    decision = RetryState().decide(upstream(429, retry_after=10.0), remaining=4.0)
    assert decision.verdict is RetryVerdict.DEADLINE
    assert "deadline" in decision.reason
    assert "4.000 s left" in decision.reason


def test_a_passed_deadline_gives_up_even_without_a_wait() -> None:
    decision = RetryState().decide(upstream(503), remaining=0.0, rng=FixedRandom(0.0))
    assert decision.verdict is RetryVerdict.DEADLINE


def test_max_attempts_counts_the_first_attempt() -> None:
    state = RetryState(RetryPolicy(max_attempts=3))
    exc = upstream(502)
    assert state.decide(exc).retry
    assert state.increment().decide(exc).retry
    decision = state.increment().increment().decide(exc)
    assert decision.verdict is RetryVerdict.EXHAUSTED
    assert "3 of 3" in decision.reason


def test_increment_returns_a_new_state_and_leaves_the_old_one() -> None:
    state = RetryState()
    following = state.increment()
    assert (state.attempt, following.attempt) == (1, 2)
    assert following.policy is state.policy


def test_a_spent_budget_refuses_the_retry() -> None:
    budget = RetryBudget(BudgetPolicy(percent_can_retry=0.0, min_retries_per_second=0.0),
                         clock=FakeClock())
    decision = RetryState().decide(upstream(503), budget=budget)
    assert decision.verdict is RetryVerdict.BUDGET


def test_the_budget_is_drawn_only_when_everything_else_allows_a_retry() -> None:
    budget = RetryBudget(BudgetPolicy(percent_can_retry=0.0, min_retries_per_second=0.1,
                                      window=10.0), clock=FakeClock())
    assert budget.available() == 1
    RetryState().decide(upstream(400), budget=budget)
    RetryState(attempt=3).decide(upstream(503), budget=budget)
    RetryState().decide(upstream(429, retry_after=9.0), remaining=1.0, budget=budget)
    assert budget.available() == 1
    assert RetryState().decide(upstream(503), budget=budget).retry
    assert budget.available() == 0


def test_the_shared_random_source_is_used_when_none_is_given() -> None:
    delays = {RetryState().decide(upstream(500)).delay for _ in range(20)}
    assert len(delays) > 1
    assert all(0 <= d <= 0.5 for d in delays)


def test_a_seeded_random_source_makes_the_delays_repeatable() -> None:
    first = [RetryState(attempt=2).decide(upstream(500), rng=random.Random(7)).delay
             for _ in range(3)]
    assert first == [first[0]] * 3


@pytest.mark.parametrize(("field", "value"), [
    ("max_attempts", 0), ("max_attempts", 2.5), ("base_delay", -1.0),
    ("max_delay", 0.1), ("retry_after_cap", float("nan")), ("retryable_statuses", {99}),
    ("retryable_statuses", 429), ("retry_timeouts", "yes"),
])
def test_bad_settings_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field


def test_retryable_statuses_accept_any_collection() -> None:
    policy = RetryPolicy(retryable_statuses={429, 503})  # type: ignore[arg-type]
    assert policy.retryable_statuses == frozenset({429, 503})
