"""Call deadlines on a coarse timer: one periodic check per event loop, not a timer per call.

Arming and disarming ``asyncio.timeout`` costs about 10 µs, a measurable share of a pooled
request, and a deadline of seconds needs no finer precision than :data:`TICK`. While calls
with a deadline are in flight, the loop's :class:`DeadlineWatch` looks every ``TICK`` for
deadlines that passed and cancels their tasks, as ``asyncio.timeout`` would; the call then
turns that cancellation into its own error (:meth:`Deadline.expired_with`).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Final

__all__ = ["TICK", "Deadline", "watch_deadline"]

# How late a deadline may fire, at most (plus the loop's own lag).
TICK: Final = 0.02


class Deadline:
    """One watched deadline; ``done()`` it when the watched code finishes."""

    __slots__ = ("_cancelling", "_watch", "expired", "task", "when")

    def __init__(self, watch: DeadlineWatch, task: asyncio.Task[Any], when: float) -> None:
        self._watch = watch
        self.task = task
        self.when = when
        self.expired = False
        self._cancelling = task.cancelling()

    def done(self) -> None:
        self._watch.deadlines.discard(self)

    def expired_with(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` is the cancellation this deadline caused; undoes it if so."""
        self.done()
        if not self.expired:
            return False
        # As asyncio.timeout: only our own cancellation, and not one also asked by others.
        return self.task.uncancel() <= self._cancelling and isinstance(
            exc, asyncio.CancelledError)


class DeadlineWatch:
    """The deadlines of one event loop, checked every :data:`TICK` while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.deadlines: set[Deadline] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, seconds: float) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        deadline = Deadline(self, task, self._loop.time() + seconds)
        self.deadlines.add(deadline)
        if self._handle is None:
            self._handle = self._loop.call_later(TICK, self._check)
        return deadline

    def _check(self) -> None:
        now = self._loop.time()
        for deadline in [d for d in self.deadlines if d.when <= now]:
            self.deadlines.discard(deadline)
            deadline.expired = True
            deadline.task.cancel()
        self._handle = self._loop.call_later(TICK, self._check) if self.deadlines else None


_WATCHES: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineWatch]] = (
    weakref.WeakKeyDictionary())


def watch_deadline(seconds: float) -> Deadline:
    """Cancel the current task ``seconds`` from now (within ``TICK``) unless done first."""
    loop = asyncio.get_running_loop()
    watch = _WATCHES.get(loop)
    if watch is None:
        watch = _WATCHES[loop] = DeadlineWatch(loop)
    return watch.watch(seconds)
