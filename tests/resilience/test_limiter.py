"""TokenBucket and RateLimiter: requests and tokens per minute, on an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilkit import HYPOTHESIS, FakeClock

from rag_llm.errors import ConfigError
from rag_llm.resilience import RateLimiter, RateLimiterBackend, RateLimits, TokenBucket


def test_a_bucket_starts_full_and_grants_until_empty() -> None:
    bucket = TokenBucket(rate=1.0, capacity=3.0, clock=FakeClock())
    assert [bucket.acquire() for _ in range(3)] == [None, None, None]
    assert bucket.acquire() == pytest.approx(1.0)


def test_the_wait_returned_is_exactly_long_enough() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=10.0, clock=clock)
    assert bucket.acquire(10.0) is None
    wait = bucket.acquire(3.0)
    assert wait == pytest.approx(1.5)
    clock.advance(wait)  # type: ignore[arg-type]
    assert bucket.acquire(3.0) is None


def test_a_refused_acquire_takes_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=5.0, clock=clock)
    bucket.acquire(4.0)
    assert bucket.acquire(3.0) is not None
    assert bucket.available() == pytest.approx(1.0)


def test_a_bucket_never_fills_beyond_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100.0, capacity=5.0, clock=clock)
    clock.advance(3600.0)
    assert bucket.available() == 5.0


def test_a_cost_above_capacity_can_never_be_granted() -> None:
    assert TokenBucket(rate=1.0, capacity=5.0, clock=FakeClock()).acquire(6.0) == math.inf


@given(steps=st.lists(st.tuples(st.floats(0, 2), st.floats(0, 4)), max_size=200))
@HYPOTHESIS
def test_granted_cost_never_exceeds_capacity_plus_rate_times_elapsed(
    steps: list[tuple[float, float]]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=clock)
    start, granted = clock.now, 0.0
    for pause, cost in steps:
        clock.advance(pause)
        if bucket.acquire(cost) is None:
            granted += cost
        assert granted <= 4.0 + 2.0 * (clock.now - start) + 1e-6


def test_the_limiter_takes_one_request_and_the_calls_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=60, tokens_per_minute=600),
                          clock=clock)
    assert limiter.acquire(500) is None
    wait = limiter.acquire(200)
    assert wait == pytest.approx(10.0)  # 100 tokens short at 10 a second


def test_a_refusal_by_one_limit_takes_from_neither() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=2, tokens_per_minute=1000,
                                     burst_seconds=60), clock=clock)
    assert limiter.acquire(2000) == math.inf
    assert limiter.acquire(10) is None
    assert limiter.acquire(10) is None
    assert limiter.acquire(10) == pytest.approx(30.0)  # the request limit decides


def test_the_limiter_reports_the_longer_of_both_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=60, tokens_per_minute=60),
                          clock=clock)
    limiter.acquire(60)
    assert limiter.acquire(30) == pytest.approx(30.0)


def test_without_limits_every_call_passes() -> None:
    limiter = RateLimiter(RateLimits(), clock=FakeClock())
    assert all(limiter.acquire(10**9) is None for _ in range(1000))


def test_burst_seconds_sizes_the_buckets() -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=600, burst_seconds=1.0),
                          clock=FakeClock())
    assert [limiter.acquire() for _ in range(11)][-2:] == [None, pytest.approx(0.1)]


def test_local_limiters_satisfy_the_backend_protocol() -> None:
    assert isinstance(TokenBucket(1.0, 1.0), RateLimiterBackend)
    assert isinstance(RateLimiter(RateLimits()), RateLimiterBackend)


@pytest.mark.parametrize(("build", "field"), [
    (lambda: RateLimits(requests_per_minute=0), "requests_per_minute"),
    (lambda: RateLimits(tokens_per_minute=-5), "tokens_per_minute"),
    (lambda: RateLimits(burst_seconds=0), "burst_seconds"),
    (lambda: TokenBucket(rate=0.0, capacity=1.0), "rate"),
    (lambda: TokenBucket(rate=1.0, capacity=float("inf")), "capacity"),
    (lambda: TokenBucket(1.0, 1.0).acquire(-1.0), "cost"),
    (lambda: RateLimiter(RateLimits()).acquire(float("nan")), "cost"),
])
def test_bad_settings_raise_config_error_naming_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field
