"""Limits shared by every process of a service: rate limits and ``global_max_in_flight``.

With ``state`` pointing at a Redis, each endpoint's ``requests_per_minute`` and
``tokens_per_minute`` are one GCRA limit in Redis (:class:`SharedRateLimiter`), and
``global_max_in_flight`` caps the calls in flight to it across processes with leases
(:class:`InFlightLimit`; the waiting is in :mod:`rag_llm.calls._async.leases`). Without a
Redis, the same settings hold in this process. While Redis is unavailable,
``on_state_error`` decides: ``local`` limits (the shared ones divided by
``expected_instances``), or ``fail`` with :class:`~rag_llm.errors.StateUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import threading
import weakref
from dataclasses import dataclass
from typing import Final

from rag_llm.errors import StateUnavailableError
from rag_llm.resilience.limiter import RateLimiter, RateLimits
from rag_llm.state import StateBackend
from rag_llm.transport import TransportSettings

__all__ = ["AsyncWaiter", "InFlightLimit", "Lease", "SharedRateLimiter", "SyncWaiter"]

# Polls for a free lease start this far apart and back off to the maximum, jittered.
FIRST_POLL: Final = 0.005
MAX_POLL: Final = 0.05


class SharedRateLimiter:
    """One endpoint's rate limits in Redis, GCRA timed by the server's clock.

    A :class:`~rag_llm.resilience.limiter.RateLimiterBackend` (``acquire``) for sync calls,
    with ``aacquire`` for async ones. ``math.inf``: the cost exceeds the burst.
    """

    def __init__(self, backend: StateBackend, endpoint: str, limits: RateLimits, *,
                 fail: bool, instances: int) -> None:
        self.backend = backend
        self.limits = limits
        self._fail = fail
        self._keys = (backend.key(endpoint, "rate:requests"), backend.key(endpoint, "rate:tokens"))
        spec: list[float] = []
        for what in ("requests", "tokens"):
            rate, burst = limits.per_second(what), limits.capacity(what)
            if rate is None or burst is None:
                spec += [0.0, 0.0]
            else:
                spec += [1.0 / rate, burst / rate]
        self._spec = (spec[0], spec[1], spec[2], spec[3])
        self.local = RateLimiter(limits.divided(instances))

    def _too_big(self, cost: float) -> bool:
        burst = self.limits.capacity("tokens")
        return burst is not None and cost > burst

    def acquire(self, cost: float = 0.0, ticket: str = "") -> float | None:
        if self._too_big(cost):
            return math.inf
        if self.backend.usable():
            try:
                return self._denied(self.backend.gcra(self._keys, self._spec, cost,
                                                      ticket or _ticket()))
            except StateUnavailableError:
                if self._fail:
                    raise
        elif self._fail:
            raise self.backend.unavailable()
        return self._fallback(cost)

    async def aacquire(self, cost: float = 0.0, ticket: str = "") -> float | None:
        if self._too_big(cost):
            return math.inf
        if self.backend.usable():
            try:
                return self._denied(await self.backend.agcra(self._keys, self._spec, cost,
                                                             ticket or _ticket()))
            except StateUnavailableError:
                if self._fail:
                    raise
        elif self._fail:
            raise self.backend.unavailable()
        return self._fallback(cost)

    def _denied(self, wait: float | None) -> float | None:
        if wait is not None:
            self.backend.counts.add("denials")
        return wait

    def _fallback(self, cost: float) -> float | None:
        self.backend.counts.add("fallbacks")
        return self._denied(self.local.acquire(cost))


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot of ``global_max_in_flight``: in Redis (``member``) or local (None)."""

    member: str | None


class InFlightLimit:
    """``global_max_in_flight`` of one endpoint: leases in Redis, or a count in the process.

    ``held`` counts this process's leases of either kind, so that the local fallback
    (``cap // expected_instances``) counts calls that went out under Redis leases too.
    """

    def __init__(self, cap: int, settings: TransportSettings, *,
                 backend: StateBackend | None = None, endpoint: str = "", fail: bool = False,
                 instances: int = 1) -> None:
        self.cap = cap
        self.settings = settings
        self.backend = backend
        self.local_cap = cap if backend is None else max(cap // instances, 1)
        self._key = "" if backend is None else backend.key(endpoint, "in_flight")
        self._fail = fail
        self._lock = threading.Lock()
        self.held = 0
        self._threads = SyncWaiter()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncWaiter] = (
            weakref.WeakKeyDictionary())
        if backend is not None:
            backend.lease_counters.append(self._count_held)

    def _count_held(self) -> int:
        return self.held

    def waited(self, seconds: float) -> None:
        """A call found every slot held and waited ``seconds`` (for metrics)."""
        if self.backend is not None:
            self.backend.counts.add("lease_waits")
            self.backend.counts.add("lease_wait_seconds", seconds)

    def wait_limit(self, remaining: float | None) -> float:
        """Waiting for a lease counts against pool_timeout, and never past the deadline."""
        pool = self.settings.timeouts.pool
        return pool if remaining is None else max(min(pool, remaining), 0.0)

    def async_waiter(self) -> AsyncWaiter:
        loop = asyncio.get_running_loop()
        waiter = self._loops.get(loop)
        if waiter is None:
            waiter = self._loops[loop] = AsyncWaiter(loop)
        return waiter

    def sync_waiter(self) -> SyncWaiter:
        return self._threads

    def _local(self) -> Lease | None:
        if self.backend is not None:
            self.backend.counts.add("fallbacks")
        with self._lock:
            if self.held >= self.local_cap:
                return None
            self.held += 1
            return Lease(None)

    def _taken(self, member: str) -> Lease:
        assert self.backend is not None
        with self._lock:
            self.held += 1
        self.backend.hold(self._key, member)
        return Lease(member)

    def try_acquire(self) -> Lease | None:
        """A lease now, or None: every slot is held."""
        backend = self.backend
        if backend is None:
            return self._local()
        if backend.usable():
            member = _ticket()
            try:
                if not backend.acquire_lease(self._key, self.cap, member):
                    return None
            except StateUnavailableError:
                if self._fail:
                    raise
            else:
                return self._taken(member)
        elif self._fail:
            raise backend.unavailable()
        return self._local()

    async def atry_acquire(self) -> Lease | None:
        backend = self.backend
        if backend is None:
            return self._local()
        if backend.usable():
            member = _ticket()
            try:
                if not await backend.aacquire_lease(self._key, self.cap, member):
                    return None
            except StateUnavailableError:
                if self._fail:
                    raise
            else:
                return self._taken(member)
        elif self._fail:
            raise backend.unavailable()
        return self._local()

    def _released(self) -> None:
        with self._lock:
            self.held -= 1
        self._threads.wake()
        for waiter in list(self._loops.values()):
            waiter.wake()

    def release(self, lease: Lease) -> None:
        try:
            if lease.member is not None and self.backend is not None:
                self.backend.drop(self._key, lease.member)
                if self.backend.usable():
                    self.backend.release_lease(self._key, lease.member)
        except StateUnavailableError:
            pass
        finally:
            self._released()

    async def arelease(self, lease: Lease) -> None:
        try:
            if lease.member is not None and self.backend is not None:
                self.backend.drop(self._key, lease.member)
                if self.backend.usable():
                    await self.backend.arelease_lease(self._key, lease.member)
        except StateUnavailableError:
            pass
        finally:
            self._released()


class AsyncWaiter:
    """The callers of one event loop waiting for a lease: one polls at a time, in turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._turn = asyncio.Lock()
        self._event = asyncio.Event()

    def busy(self) -> bool:
        """Whether a caller of this loop is waiting for a lease now."""
        return self._turn.locked()

    async def take_turn(self, limit: float) -> bool:
        try:
            async with asyncio.timeout(limit):
                await self._turn.acquire()
        except TimeoutError:
            return False
        return True

    def end_turn(self) -> None:
        self._turn.release()

    def arm(self) -> None:
        self._event.clear()

    async def sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass or a lease of this process is released."""
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            pass

    def wake(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                self._loop.call_soon_threadsafe(self._event.set)


class SyncWaiter:
    """The threads waiting for a lease: one polls at a time, in turn."""

    def __init__(self) -> None:
        self._turn = threading.Lock()
        self._changed = threading.Condition()
        self._generation = 0
        self._armed = 0

    def busy(self) -> bool:
        return self._turn.locked()

    def take_turn(self, limit: float) -> bool:
        return self._turn.acquire(timeout=max(limit, 0.0))

    def end_turn(self) -> None:
        self._turn.release()

    def arm(self) -> None:
        with self._changed:
            self._armed = self._generation

    def sleep(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._generation != self._armed, seconds)

    def wake(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()


def _ticket() -> str:
    return secrets.token_hex(8)
