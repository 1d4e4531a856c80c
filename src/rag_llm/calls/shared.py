"""Limits shared by every process of a service: rate limits and ``global_max_in_flight``.

With ``state`` pointing at a Redis, each endpoint's ``requests_per_minute`` and
``tokens_per_minute`` are one GCRA limit in Redis (:class:`SharedRateLimiter`), and
``global_max_in_flight`` caps the calls in flight to it across processes with leases
(:class:`InFlightLimit`; the waiting is in :mod:`rag_llm.calls._async.leases`). A call's
rate limits and lease are one round trip, batched with its event loop's other calls, and a
lease goes back off the call's path (:mod:`rag_llm.state`). Without a Redis, the same
settings hold in this process. While Redis is unavailable, ``on_state_error`` decides:
``local`` limits (the shared ones divided by ``expected_instances``), or ``fail`` with
:class:`~rag_llm.errors.StateUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Final

from rag_llm.errors import StateUnavailableError
from rag_llm.resilience.limiter import RateLimiter, RateLimits
from rag_llm.state import Answer, Ask, EndpointLimits, StateBackend, unique_id
from rag_llm.transport import TransportSettings

__all__ = ["AsyncWaiter", "InFlightLimit", "Lease", "SharedRateLimiter", "SyncWaiter",
           "rate_spec"]

# Polls for a free lease start this far apart and back off to the maximum, jittered.
FIRST_POLL: Final = 0.005
MAX_POLL: Final = 0.05


def rate_spec(limits: RateLimits | None) -> tuple[float, float, float, float]:
    """GCRA's terms for ``limits``: requests' interval (s per request) and tolerance (burst
    x interval), then the tokens'; an interval of 0 where there is no such limit."""
    spec: list[float] = []
    for what in ("requests", "tokens"):
        rate = None if limits is None else limits.per_second(what)
        burst = None if limits is None else limits.capacity(what)
        spec += [0.0, 0.0] if rate is None or burst is None else [1.0 / rate, burst / rate]
    return spec[0], spec[1], spec[2], spec[3]


class SharedRateLimiter:
    """One endpoint's rate limits in Redis, GCRA timed by the server's clock.

    ``admit`` (sync calls) and ``aadmit`` (async ones) answer the seconds to wait (None:
    admitted; ``math.inf``: the cost exceeds the burst) and, when the endpoint also has a
    ``global_max_in_flight`` in Redis, the lease taken in the same round trip (None when
    none was free, or other callers here are already waiting for one: the call then waits
    its turn in :mod:`rag_llm.calls._async.leases`).
    """

    def __init__(self, backend: StateBackend, limits: EndpointLimits, rate_limits: RateLimits,
                 *, fail: bool, instances: int, in_flight: InFlightLimit | None = None) -> None:
        self.backend = backend
        self.limits = rate_limits
        self._shared = limits
        self._fail = fail
        self._in_flight = in_flight if in_flight is not None and in_flight.backend else None
        self.local = RateLimiter(rate_limits.divided(instances))

    def _too_big(self, cost: float) -> bool:
        burst = self.limits.capacity("tokens")
        return burst is not None and cost > burst

    def admit(self, cost: float, ticket: str,
              hold: bool) -> tuple[float | None, Lease | None]:
        if self._too_big(cost):
            return math.inf, None
        if self.backend.usable():
            in_flight = self._in_flight
            member = "" if in_flight is None or in_flight.sync_waiter().busy() else unique_id()
            try:
                answer = self.backend.admit(self._shared,
                                            Ask(ticket, cost, True, member, hold))
            except StateUnavailableError:
                if self._fail:
                    raise
            else:
                return self._answered(answer, member)
        elif self._fail:
            raise self.backend.unavailable()
        return self._fallback(cost), None

    async def aadmit(self, cost: float, ticket: str,
                     hold: bool) -> tuple[float | None, Lease | None]:
        if self._too_big(cost):
            return math.inf, None
        if self.backend.usable():
            in_flight = self._in_flight
            member = "" if in_flight is None or in_flight.async_waiter().busy() else unique_id()
            try:
                answer = await self.backend.aadmit(self._shared,
                                                   Ask(ticket, cost, True, member, hold))
            except StateUnavailableError:
                if self._fail:
                    raise
            else:
                return self._answered(answer, member)
        elif self._fail:
            raise self.backend.unavailable()
        return self._fallback(cost), None

    def _answered(self, answer: Answer, member: str) -> tuple[float | None, Lease | None]:
        if answer.wait is not None:
            self.backend.counts.add("denials")
            return answer.wait, None
        if answer.leased and self._in_flight is not None:
            return None, self._in_flight.taken(member)
        return None, None

    def _fallback(self, cost: float) -> float | None:
        self.backend.counts.add("fallbacks")
        wait = self.local.acquire(cost)
        if wait is not None:
            self.backend.counts.add("denials")
        return wait


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot of ``global_max_in_flight``: in Redis (``member``) or local (None)."""

    member: str | None


class InFlightLimit:
    """``global_max_in_flight`` of one endpoint: leases in Redis, or a count in the process.

    ``held`` counts this process's leases of either kind, so that the local fallback
    (``cap // expected_instances``) counts calls that went out under Redis leases too. The
    other way round, Redis knows nothing of local leases: once it is back, calls ask it
    again at once, and a lease it grants is taken only while the process holds fewer than
    the local cap, until the calls that went out under local leases have ended.
    """

    def __init__(self, cap: int, settings: TransportSettings, *,
                 backend: StateBackend | None = None, limits: EndpointLimits | None = None,
                 fail: bool = False, instances: int = 1) -> None:
        self.cap = cap
        self.settings = settings
        self.backend = backend if limits is not None else None
        self.local_cap = cap if self.backend is None else max(cap // instances, 1)
        self._limits = limits
        self._key = "" if limits is None else limits.leases
        self._fail = fail
        self._lock = threading.Lock()
        self.held = 0
        self.local_held = 0  # the part of ``held`` that Redis does not see
        self._threads = SyncWaiter()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncWaiter] = (
            weakref.WeakKeyDictionary())
        self._waiters: list[AsyncWaiter] = []  # the same, to wake without walking weakrefs
        if self.backend is not None:
            self.backend.lease_counters.append(self._count_held)

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
            self._waiters = [w for w in self._waiters if w.alive()] + [waiter]
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
            self.local_held += 1
            return Lease(None)

    def taken(self, member: str) -> Lease | None:
        """A lease Redis granted as ``member``, now held by this process; None, and given
        back, when calls under local leases (which Redis does not count, and which may have
        been taken while this grant was on its way) already fill the local cap."""
        assert self.backend is not None
        with self._lock:
            refused = self.local_held > 0 and self.held >= self.local_cap
            if not refused:
                self.held += 1
        if refused:
            self.backend.release(self._key, member)
            return None
        self.backend.hold(self._key, member)
        return Lease(member)

    def try_acquire(self) -> Lease | None:
        """A lease now, or None: every slot is held."""
        backend = self.backend
        if backend is None or self._limits is None:
            return self._local()
        if backend.usable():
            member = unique_id()
            try:
                answer = backend.admit(self._limits, Ask("", 0.0, False, member))
            except StateUnavailableError:
                if self._fail:
                    raise
            else:
                return self.taken(member) if answer.leased else None
        elif self._fail:
            raise backend.unavailable()
        return self._local()

    async def atry_acquire(self) -> Lease | None:
        backend = self.backend
        if backend is None or self._limits is None:
            return self._local()
        if backend.usable():
            member = unique_id()
            try:
                answer = await backend.aadmit(self._limits, Ask("", 0.0, False, member))
            except StateUnavailableError:
                if self._fail:
                    raise
            else:
                return self.taken(member) if answer.leased else None
        elif self._fail:
            raise backend.unavailable()
        return self._local()

    def release(self, lease: Lease) -> None:
        """Give the slot back: a Redis lease is queued for release off the call's path."""
        if lease.member is not None and self.backend is not None:
            self.backend.drop(self._key, lease.member)
            self.backend.release(self._key, lease.member)
        with self._lock:
            self.held -= 1
            if lease.member is None:
                self.local_held -= 1
        self._threads.wake()
        for waiter in self._waiters:
            waiter.wake()


class AsyncWaiter:
    """The callers of one event loop waiting for a lease: one polls at a time, in turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the limit's map of waiters is keyed by the loop, which must be free to go.
        self._loop = weakref.ref(loop)
        self._turn = asyncio.Lock()
        self._event = asyncio.Event()

    def alive(self) -> bool:
        return self._loop() is not None

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
        if not self.busy():
            return  # nobody polls: the next caller asks Redis at once anyway
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop()
        if loop is None:
            return
        if running is loop:
            self._event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(self._event.set)


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
        if not self.busy():
            return
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

