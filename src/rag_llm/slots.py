"""A count of slots that threads and event loops wait on together.

Waiters on threads block on a lock; waiters on event loops await a future, woken with
``call_soon_threadsafe`` when a slot is released from elsewhere. First come, first served
across loops and threads, except that a releasing client's own waiter may pass the others
a few times (it reuses the connection the client's ended call left idle). An uncontended
acquire is a lock and an integer operation. A leaf module: the transports' shared limits
and the adaptive gate both count with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

__all__ = ["Slots"]

# ruff: noqa: ASYNC109 - a waiter's timeout is read from the pool settings, not the caller
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
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, owner)
        if not self._enqueue(waiter):
            return True
        if on_wait is not None:
            on_wait()
        future = waiter.future
        assert future is not None
        # A timer that resolves the future, not asyncio.timeout: at saturation every call
        # waits here, and arming and leaving asyncio.timeout costs about 10 us.
        timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _resolve,
                                                             future)
        try:
            await future
        except BaseException:
            if self._give_up(waiter):
                self.release()  # granted just as the wait was cancelled: hand it on
            raise
        finally:
            if timer is not None:
                timer.cancel()
        # Woken by a grant, or by the timer: then the slot may still have come meanwhile.
        return waiter.granted or self._give_up(waiter)

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
