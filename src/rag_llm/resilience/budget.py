"""A retry budget, after Finagle's: retries may add only a fixed share to the request rate.

Every request deposits one unit; every retry withdraws one, and is refused when the window
holds no more than ``percent_can_retry`` of the requests made in the last ``window`` seconds
plus a reserve of ``min_retries_per_second * window`` (so a quiet client can still retry).
In an outage this caps the load a client adds at ``1 + percent_can_retry`` times its request
rate, instead of ``max_attempts`` times.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from rag_llm.resilience._common import Clock, check_number

__all__ = [
    "DEFAULT_MIN_RETRIES_PER_SECOND",
    "DEFAULT_PERCENT_CAN_RETRY",
    "DEFAULT_WINDOW",
    "BudgetPolicy",
    "RetryBudget",
]

# Finagle's RetryBudget defaults: ttl 10 s, minRetriesPerSec 10, percentCanRetry 0.2.
DEFAULT_PERCENT_CAN_RETRY: Final = 0.2
DEFAULT_WINDOW: Final = 10.0
DEFAULT_MIN_RETRIES_PER_SECOND: Final = 10.0
# Events closer together than window / _SLICES share one bucket: memory stays bounded.
_SLICES: Final = 32


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """The share of requests that may be retried, over which window, and the reserve.

    >>> BudgetPolicy(percent_can_retry=0.1).window
    10.0
    """

    percent_can_retry: float = DEFAULT_PERCENT_CAN_RETRY
    window: float = DEFAULT_WINDOW
    min_retries_per_second: float = DEFAULT_MIN_RETRIES_PER_SECOND

    def __post_init__(self) -> None:
        check_number("percent_can_retry", self.percent_can_retry, minimum=0, maximum=1000)
        check_number("window", self.window, minimum=0, exclusive=True)
        check_number("min_retries_per_second", self.min_retries_per_second, minimum=0)

    @property
    def reserve(self) -> float:
        """Retries allowed in any window on top of the share of requests."""
        return self.min_retries_per_second * self.window


class _Bucket:
    """Events of one slice: the first and last time, and how many."""

    __slots__ = ("count", "first", "last")

    def __init__(self, now: float) -> None:
        self.first = self.last = now
        self.count = 0


class RetryBudget:
    """Thread-safe retry budget: ``deposit()`` per request, ``try_withdraw()`` per retry.

    Events are grouped in buckets of ``window / 32`` seconds. A deposit bucket expires with
    its first event and a withdrawal bucket with its last, so the count is never generous:
    at every granted retry, the retries of the last ``window`` seconds are at most
    ``percent_can_retry * requests + reserve`` of that same window.
    """

    def __init__(self, policy: BudgetPolicy | None = None, *, clock: Clock = time.monotonic):
        self.policy = policy or BudgetPolicy()
        self._clock = clock
        self._slice = self.policy.window / _SLICES
        self._lock = threading.Lock()
        self._deposits: deque[_Bucket] = deque()
        self._withdrawals: deque[_Bucket] = deque()
        self._deposited = 0
        self._withdrawn = 0

    def deposit(self) -> None:
        """Count one request (a first attempt; retries do not deposit)."""
        with self._lock:
            now = self._expire()
            bucket = self._deposits[-1] if self._deposits else None
            if bucket is None or now - bucket.first >= self._slice:
                bucket = _Bucket(now)
                self._deposits.append(bucket)
            bucket.count += 1
            self._deposited += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False, taking nothing, when it is spent."""
        with self._lock:
            now = self._expire()
            if self._withdrawn + 1 > self._balance_limit():
                return False
            bucket = self._withdrawals[-1] if self._withdrawals else None
            if bucket is None or now - bucket.first >= self._slice:
                bucket = _Bucket(now)
                self._withdrawals.append(bucket)
            bucket.last = now
            bucket.count += 1
            self._withdrawn += 1
            return True

    def available(self) -> int:
        """How many retries the budget would grant now."""
        with self._lock:
            self._expire()
            return max(int(self._balance_limit() - self._withdrawn), 0)

    def _balance_limit(self) -> float:
        return self.policy.reserve + self.policy.percent_can_retry * self._deposited

    def _expire(self) -> float:
        """Drop buckets older than the window; the caller holds the lock."""
        now = self._clock()
        horizon = now - self.policy.window
        while self._deposits and self._deposits[0].first <= horizon:
            self._deposited -= self._deposits.popleft().count
        while self._withdrawals and self._withdrawals[0].last <= horizon:
            self._withdrawn -= self._withdrawals.popleft().count
        return now
