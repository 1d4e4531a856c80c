"""Limits per endpoint, shared by every client of it: each event loop's and the sync one.

A provider holds one async transport per event loop and one sync transport, each with its
own connection pool; ``max_connections`` still bounds what the provider holds to the
endpoint as a whole. Two counts do that, both shared by all of the endpoint's clients:

* :class:`Slots` counts calls in flight (at most ``max_connections``), first come first
  served across loops and threads, so no client starves the others (a client's own
  waiter may pass the others a few times: it reuses the connection the client's ended
  call left idle, where another client would open one);
* :class:`ConnectionBudget` counts open connections, taken before connecting and given
  back once the connection is closed at both ends (the server closed its side too, see
  ``_linger``), so the server never sees more open than the budget. A client that must
  connect while idle connections of other clients hold the budget asks them to close one
  (each on its own loop).

Calls in flight never exceed the limit, so when every connection is taken at least one of
them is idle or closing: a waiter for a connection always makes progress.

Waiters on threads block on a lock; waiters on event loops await a future, woken with
``call_soon_threadsafe`` when released from elsewhere. An uncontended acquire is a lock
and an integer operation.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Final, Protocol

__all__ = ["ConnectionBudget", "ConnectionWaitTimeout", "EndpointLimits", "IdleHolder",
           "Slots", "pool_deadline"]

# ruff: noqa: ASYNC109 - a waiter's timeout is read from the pool settings, not the caller
# When the call now connecting stops waiting for the pool (set once it has waited for a
# slot, so waiting for a connection only gets what is left of pool_timeout).
pool_deadline: Final[ContextVar[float | None]] = ContextVar("rag_llm_pool_deadline",
                                                            default=None)


# How many times a freed slot may go past the longest waiter to one of the releasing
# client's own waiters (see Slots.release).
_MAX_PASSED: Final = 4


class _Waiter:
    __slots__ = ("future", "granted", "lock", "loop", "owner", "passed")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, owner: object = None) -> None:
        self.loop = loop
        self.owner = owner
        self.passed = 0  # times a slot went past it to a later waiter
        self.granted = False
        self.future: asyncio.Future[None] | None = None
        self.lock: threading.Lock | None = None
        if loop is None:
            self.lock = threading.Lock()
            self.lock.acquire()
        else:
            self.future = loop.create_future()

    def wake(self) -> bool:
        """Tell the waiter it was granted a slot; False if it can no longer hear it."""
        if self.lock is not None:
            self.lock.release()
            return True
        future, loop = self.future, self.loop
        assert future is not None
        assert loop is not None
        if asyncio._get_running_loop() is loop:
            _resolve(future)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # its loop is closed: nobody will take the slot
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Slots:
    """A thread-safe count below ``limit()``, with waiters served in order of arrival.

    ``limit`` is read at each acquire and release, so it may change (an adaptive limit).

    A waiter may name its ``owner`` (the client it calls through), and so may a release:
    the freed slot then goes to the owner's first waiter rather than the longest waiter,
    whose client would have to open a connection while the owner's just went idle. The
    longest waiter is passed over at most ``_MAX_PASSED`` times, so no client starves.
    """

    __slots__ = ("_limit", "_lock", "_taken", "_waiters")

    def __init__(self, limit: int | Callable[[], int]) -> None:
        self._limit: Callable[[], int] = (limit if callable(limit)
                                          else _constant(limit))
        self._lock = threading.Lock()
        self._taken = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def taken(self) -> int:
        return self._taken

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one."""
        with self._lock:
            if self._taken < self._limit() and not self._waiters:
                self._taken += 1
                return True
        return False

    def _enqueue(self, waiter: _Waiter) -> bool:
        """Queue ``waiter``; False if a slot was free after all (then it is taken)."""
        with self._lock:
            if self._taken < self._limit() and not self._waiters:
                self._taken += 1
                return False
            self._waiters.append(waiter)
            return True

    def _give_up(self, waiter: _Waiter) -> bool:
        """Stop waiting; True if the slot had been granted meanwhile (the caller has it)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    async def acquire(self, timeout: float | None = None,
                      on_wait: Callable[[], None] | None = None, owner: object = None) -> bool:
        """Wait up to ``timeout`` seconds for a slot; False if none came.

        ``on_wait`` runs once the caller is queued (not when a slot was free at once).
        """
        if self.try_acquire():
            return True
        waiter = _Waiter(asyncio.get_running_loop(), owner)
        if not self._enqueue(waiter):
            return True
        if on_wait is not None:
            on_wait()
        assert waiter.future is not None
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except TimeoutError:
            return self._give_up(waiter)
        except BaseException:
            if self._give_up(waiter):
                self.release()  # granted just as the wait was cancelled: hand it on
            raise
        return True

    def acquire_sync(self, timeout: float | None = None,
                     on_wait: Callable[[], None] | None = None, owner: object = None) -> bool:
        """Blocking twin of :meth:`acquire`, for threads (never on an event loop)."""
        if self.try_acquire():
            return True
        waiter = _Waiter(None, owner)
        if not self._enqueue(waiter):
            return True
        if on_wait is not None:
            on_wait()
        assert waiter.lock is not None
        if waiter.lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return True
        return self._give_up(waiter)

    def release(self, owner: object = None) -> None:
        """Give a slot back, granting it (and any the limit now allows) to the next waiters.

        With an ``owner``, its first waiter may come before the others (see the class).
        """
        woken: list[_Waiter] = []
        with self._lock:
            self._taken -= 1
            limit = self._limit()
            if owner is not None and self._waiters and self._taken < limit:
                mine = self._owned_by(owner)
                if mine is not None:
                    mine.granted = True
                    self._taken += 1
                    woken.append(mine)
            while self._waiters and self._taken < limit:
                waiter = self._waiters.popleft()
                waiter.granted = True
                self._taken += 1
                woken.append(waiter)
        for waiter in woken:
            if not waiter.wake():
                self.release()

    def _owned_by(self, owner: object) -> _Waiter | None:
        """Take ``owner``'s first waiter out of the queue if it may pass the first one."""
        first = self._waiters[0]
        if first.owner is owner:
            return None  # first in line anyway
        if first.passed >= _MAX_PASSED:
            return None
        for waiter in self._waiters:
            if waiter.owner is owner:
                first.passed += 1
                self._waiters.remove(waiter)
                return waiter
        return None


def _constant(value: int) -> Callable[[], int]:
    def limit() -> int:
        return value
    return limit


class IdleHolder(Protocol):
    """A client holding connections of the budget: it can be asked to close an idle one."""

    def release_idle(self) -> None:
        """Close one idle connection soon, if there is one; callable from any thread."""


class ConnectionWaitTimeout(Exception):
    """No connection of the budget came free within ``pool_timeout``.

    Raised inside a transport's connect; the transport reports it as the pool timeout.
    """


class ConnectionBudget:
    """Connections open to one endpoint at once, across all of its clients."""

    def __init__(self, limit: int, pool_timeout: float) -> None:
        self.slots = Slots(limit)
        self.pool_timeout = pool_timeout
        self._holders: weakref.WeakSet[IdleHolder] = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def wanted(self) -> int:
        """How many connects are waiting for a connection to close."""
        return self.slots.waiting

    @property
    def open(self) -> int:
        return self.slots.taken

    def register(self, holder: IdleHolder) -> None:
        with self._lock:
            self._holders.add(holder)

    def unregister(self, holder: IdleHolder) -> None:
        with self._lock:
            self._holders.discard(holder)

    def _ask_holders(self) -> None:
        with self._lock:
            holders = list(self._holders)
        for holder in holders:
            holder.release_idle()

    def _timeout(self) -> float:
        deadline = pool_deadline.get()
        if deadline is None:
            return self.pool_timeout
        return max(deadline - time.monotonic(), 0.0)

    async def take(self) -> None:
        """Count a connection about to be opened, waiting if the budget is spent."""
        if not await self.slots.acquire(self._timeout(), self._ask_holders):
            raise ConnectionWaitTimeout

    def take_sync(self) -> None:
        if not self.slots.acquire_sync(self._timeout(), self._ask_holders):
            raise ConnectionWaitTimeout

    def give_back(self) -> None:
        """A counted connection was closed (or never opened)."""
        self.slots.release()


class EndpointLimits:
    """What all clients of one endpoint share: calls in flight and connections open."""

    __slots__ = ("connections", "pool_timeout", "requests")

    def __init__(self, max_connections: int, pool_timeout: float) -> None:
        self.pool_timeout = pool_timeout
        self.requests = Slots(max_connections)
        self.connections = ConnectionBudget(max_connections, pool_timeout)

    async def admit(self, client: object = None) -> float | None:
        """Take a call slot: None at once, else the pool deadline it waited under.

        ``client`` is the transport the call goes through: a slot it releases goes to its
        own waiters first (see :class:`Slots`). Raises ``TimeoutError`` when no slot came
        within ``pool_timeout``.
        """
        if self.requests.try_acquire():
            return None
        deadline = time.monotonic() + self.pool_timeout
        if not await self.requests.acquire(self.pool_timeout, owner=client):
            raise TimeoutError
        return deadline

    def admit_sync(self, client: object = None) -> float | None:
        if self.requests.try_acquire():
            return None
        deadline = time.monotonic() + self.pool_timeout
        if not self.requests.acquire_sync(self.pool_timeout, owner=client):
            raise TimeoutError
        return deadline
