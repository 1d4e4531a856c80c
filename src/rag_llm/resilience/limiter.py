"""Client-side rate limits per endpoint: requests and tokens per minute, as token buckets.

A call asks before it is sent: ``acquire(cost)`` takes ``cost`` at once and returns None, or
takes nothing and returns how many seconds until it could (``math.inf``: never, the cost is
above the bucket's capacity). Nothing is reserved while a caller waits, so a caller that
gives up leaves no debt. :class:`RateLimiterBackend` is the seam a shared backend (Redis,
for limits across processes) will implement.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from rag_llm.resilience._common import Clock, check_number

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "RateLimiter",
    "RateLimiterBackend",
    "RateLimits",
    "TokenBucket",
]

# A bucket holds one minute's allowance, as the provider states its limits.
DEFAULT_BURST_SECONDS: Final = 60.0
# Float slack so that a caller who waited exactly the time returned is let through.
_EPSILON: Final = 1e-9


@runtime_checkable
class RateLimiterBackend(Protocol):
    """Takes ``cost`` now and returns None, or returns the seconds to wait, taking nothing."""

    def acquire(self, cost: float) -> float | None: ...


class TokenBucket:
    """One thread-safe token bucket: ``rate`` tokens a second, at most ``capacity``, full at start.

    >>> bucket = TokenBucket(rate=1.0, capacity=2.0, clock=lambda: 0.0)
    >>> bucket.acquire(2.0), bucket.acquire(1.0)
    (None, 1.0)
    """

    def __init__(self, rate: float, capacity: float, *, clock: Clock = time.monotonic) -> None:
        self.rate = check_number("rate", rate, minimum=0, exclusive=True)
        self.capacity = check_number("capacity", capacity, minimum=0, exclusive=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()

    def acquire(self, cost: float = 1.0) -> float | None:
        with self._lock:
            self._refill(self._clock())
            wait = self._wait(cost)
            if wait is None:
                self._tokens -= cost
            return wait

    def available(self) -> float:
        """Tokens in the bucket now."""
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._stamp, 0.0)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._stamp = max(now, self._stamp)

    def _wait(self, cost: float) -> float | None:
        """None if ``cost`` can be taken now, else the seconds until it can; lock held."""
        check_number("cost", cost, minimum=0)
        if cost > self.capacity:
            return math.inf
        if self._tokens + _EPSILON >= cost:
            return None
        return (cost - self._tokens) / self.rate


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens per minute one endpoint accepts (None: no limit).

    Each bucket holds ``burst_seconds`` worth of its rate, unless ``burst`` (requests) or
    ``token_burst`` (tokens) says how much it holds: the most admitted at once.

    >>> RateLimits(requests_per_minute=500, tokens_per_minute=200_000).capacity("requests")
    500.0
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_seconds: float = DEFAULT_BURST_SECONDS
    burst: float | None = None
    token_burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "burst", "token_burst"):
            value = getattr(self, name)
            if value is not None:
                check_number(name, value, minimum=0, exclusive=True)
        check_number("burst_seconds", self.burst_seconds, minimum=0, exclusive=True)

    def per_second(self, what: str) -> float | None:
        """The rate of ``"requests"`` or ``"tokens"`` a second, None without that limit."""
        per_minute = self.requests_per_minute if what == "requests" else self.tokens_per_minute
        return None if per_minute is None else per_minute / 60.0

    def capacity(self, what: str) -> float | None:
        """The burst of ``"requests"`` or ``"tokens"``: what may go at once."""
        rate = self.per_second(what)
        if rate is None:
            return None
        burst = self.burst if what == "requests" else self.token_burst
        return float(burst) if burst is not None else rate * self.burst_seconds

    def divided(self, instances: int) -> RateLimits:
        """These limits shared by ``instances`` processes: each one's part."""
        if instances == 1:
            return self
        part = [None if v is None else v / instances for v in (
            self.requests_per_minute, self.tokens_per_minute)]
        return RateLimits(part[0], part[1], self.burst_seconds,
                          None if self.burst is None else max(self.burst / instances, 1.0),
                          None if self.token_burst is None else self.token_burst / instances)


class RateLimiter:
    """Both limits of one endpoint: a call takes one request and its tokens, or neither.

    ``acquire(cost)`` takes ``cost`` as the call's token estimate (prompt plus ``max_tokens``).

    >>> limiter = RateLimiter(RateLimits(requests_per_minute=60), clock=lambda: 0.0)
    >>> limiter.acquire(0) is None
    True
    """

    def __init__(self, limits: RateLimits, *, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._requests = self._bucket("requests")
        self._tokens = self._bucket("tokens")

    def _bucket(self, what: str) -> TokenBucket | None:
        rate, capacity = self.limits.per_second(what), self.limits.capacity(what)
        if rate is None or capacity is None:
            return None
        return TokenBucket(rate, capacity, clock=self._clock)

    def acquire(self, cost: float = 0.0) -> float | None:
        check_number("cost", cost, minimum=0)
        wanted = [(b, c) for b, c in ((self._requests, 1.0), (self._tokens, cost))
                  if b is not None]
        # Lock order: this limiter, then each bucket in a fixed order.
        with self._lock:
            now = self._clock()
            waits: list[float] = []
            for bucket, amount in wanted:
                with bucket._lock:
                    bucket._refill(now)
                    wait = bucket._wait(amount)
                if wait is not None:
                    waits.append(wait)
            if waits:
                return max(waits)
            for bucket, amount in wanted:
                with bucket._lock:
                    bucket._tokens -= amount
            return None
