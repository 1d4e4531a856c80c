"""An adaptive concurrency limit: loss-based AIMD (Netflix concurrency-limits, TCP Reno).

The limit grows by ``1/limit`` for each call that succeeds while at least half of the limit
is in use (so by about one per round trip of a full window, as TCP's congestion avoidance
does), and shrinks by ``backoff_ratio`` when a call is dropped: the upstream answered 429 or
503, or timed out. As TCP cuts its window once per round trip, only a call that started
after the last cut can cut again: a burst of drops from one overloaded moment shrinks it
once, not to the floor. It stays between ``min_limit`` and ``max_limit`` (the provider's
``max_connections``).

:class:`AdmissionGate` holds callers back while the limit is reached: one count for every
event loop and thread of the endpoint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Final

from rag_llm.errors import ConfigError
from rag_llm.resilience._common import Clock
from rag_llm.slots import Slots
from rag_llm.validation import check_number

__all__ = ["DEFAULT_BACKOFF_RATIO", "AdaptiveLimit", "AdaptivePolicy", "AdmissionGate"]

DEFAULT_BACKOFF_RATIO: Final = 0.9  # Netflix AIMDLimit's default


@dataclass(frozen=True, slots=True)
class AdaptivePolicy:
    """Bounds and steps of an adaptive limit.

    >>> AdaptivePolicy(max_limit=100).initial_limit
    20
    """

    max_limit: int
    min_limit: int = 1
    initial_limit: int = 20
    backoff_ratio: float = DEFAULT_BACKOFF_RATIO

    def __post_init__(self) -> None:
        check_number("min_limit", self.min_limit, minimum=1, integer=True)
        check_number("max_limit", self.max_limit, minimum=self.min_limit, integer=True)
        object.__setattr__(self, "initial_limit",
                           min(max(self.initial_limit, self.min_limit), self.max_limit))
        check_number("backoff_ratio", self.backoff_ratio, minimum=0, exclusive=True)
        if self.backoff_ratio >= 1:
            raise ConfigError("backoff_ratio", self.backoff_ratio, "must be < 1")


class AdaptiveLimit:
    """The current concurrency limit of one endpoint; thread-safe."""

    def __init__(self, policy: AdaptivePolicy, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._limit = float(policy.initial_limit)
        self._last_backoff = float("-inf")

    @property
    def limit(self) -> int:
        return int(self._limit)

    def now(self) -> float:
        return self._clock()

    def record(self, *, in_flight: int, dropped: bool, started: float) -> int:
        """Update the limit after a call, started at ``started``, with ``in_flight`` running."""
        p = self.policy
        with self._lock:
            if dropped:
                if started >= self._last_backoff:
                    self._limit = max(float(p.min_limit), int(self._limit * p.backoff_ratio))
                    self._last_backoff = self._clock()
            elif in_flight * 2 >= self._limit:
                self._limit = min(float(p.max_limit), self._limit + 1 / self._limit)
            return int(self._limit)


class AdmissionGate:
    """Admits calls, from any event loop or thread, while fewer than ``limit.limit`` run.

    One gate per endpoint: the count is shared, waiters are served first come, first
    served, and ``release`` reports how the call went.
    """

    def __init__(self, limit: AdaptiveLimit) -> None:
        self._limit = limit
        self._slots = Slots(lambda: limit.limit)

    @property
    def in_flight(self) -> int:
        return self._slots.taken

    async def acquire(self) -> float:
        """Wait for a slot; the time it was granted, for :meth:`release`.

        The caller bounds the wait (e.g. with ``asyncio.timeout``).
        """
        await self._slots.acquire()
        return self._limit.now()

    def acquire_sync(self, timeout: float) -> float | None:
        """Wait up to ``timeout`` seconds on a thread: the time it was granted, or None."""
        if not self._slots.acquire_sync(timeout):
            return None
        return self._limit.now()

    def release(self, *, dropped: bool, started: float) -> None:
        self._limit.record(in_flight=self._slots.taken, dropped=dropped, started=started)
        self._slots.release()
