"""Closing a connection so that the server has seen it end before its budget is reused.

A client that closes a socket and at once opens another may be seen by the server with
both open: the server handles the first one's end later, or after the second's arrival.
So a closed connection keeps its share of the endpoint's budget until the server has
closed its side too: the client half-closes it and waits for the server's close (at most
:data:`LINGER` seconds, for a server that never closes).

The stream is closed as usual; a duplicate of its socket's descriptor keeps the socket
open for that wait, which one daemon thread does for every connection of the process. No
caller blocks, and a connection still waiting when its event loop ends is finished all
the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

__all__ = ["LINGER", "close_then", "finish_now", "hold_socket"]

log = logging.getLogger(__name__)

# How long a closed connection waits for the server to close its side.
LINGER: Final = 1.0
_INET: Final = (socket.AF_INET, socket.AF_INET6)


def hold_socket(raw: Any) -> socket.socket | None:
    """A second handle on the TCP socket ``raw``, so that it outlives its stream's close.

    ``raw`` is a stream's ``"socket"`` extra: a socket, an SSL socket or asyncio's
    ``TransportSocket``. None when there is no TCP socket to hold.
    """
    if raw is None:
        return None
    try:
        if raw.family not in _INET:
            return None
        return socket.fromfd(raw.fileno(), raw.family, raw.type)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def close_then(sock: socket.socket, done: Callable[[], None], owner: object) -> None:
    """Half-close ``sock``; close it and call ``done`` once the server has closed too.

    At most :data:`LINGER` seconds later, or at once when :func:`finish_now` is called for
    ``owner`` (the budget the socket counts in). Returns at once; ``done`` runs on the
    closing thread.
    """
    with contextlib.suppress(OSError):  # already shut, or reset: reading will say so
        sock.setblocking(False)
        sock.shutdown(socket.SHUT_WR)
    _closer().add(sock, done, owner)


class _Closer:
    """One thread that waits for the server's close of half-closed sockets.

    It runs only while sockets wait, and holds no descriptor once they are done, so a
    closed pool leaves nothing open behind it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._new: list[tuple[socket.socket, Callable[[], None], object]] = []
        self._thread: threading.Thread | None = None
        self._wake: socket.socket | None = None
        # Sockets not yet closed, by owner; owners whose sockets are to close at once.
        self._pending: Counter[object] = Counter()
        self._hurried: set[object] = set()

    def add(self, sock: socket.socket, done: Callable[[], None], owner: object) -> None:
        with self._lock:
            self._new.append((sock, done, owner))
            self._pending[owner] += 1
            if self._thread is not None:
                self._wake_up()
                return
            wake_r, self._wake = socket.socketpair()
            wake_r.setblocking(False)
            self._wake.setblocking(False)
            self._thread = threading.Thread(target=self._run, args=(wake_r,),
                                            name="rag_llm-closer", daemon=True)
            self._thread.start()

    def _wake_up(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):  # a full wake pipe already wakes it
                self._wake.send(b"\0")

    def finish_now(self, owner: object, timeout: float) -> bool:
        """Close ``owner``'s sockets now, without waiting for the server; wait until they
        are, and until the thread has ended if nothing else waits. False on ``timeout``."""
        with self._idle:
            if self._pending[owner]:
                self._hurried.add(owner)
                self._wake_up()
            done = self._idle.wait_for(
                lambda: not self._pending[owner] and (
                    self._thread is None or sum(self._pending.values()) > 0), timeout)
            self._hurried.discard(owner)
            return done

    def _done(self, sock: socket.socket, done: Callable[[], None], owner: object) -> None:
        _finish(sock, done)
        with self._idle:
            self._pending[owner] -= 1
            if self._pending[owner] <= 0:
                del self._pending[owner]
            self._idle.notify_all()

    def _run(self, wake_r: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        # Each waiting socket's deadline, what to call once it is closed, and its owner.
        waiting: dict[socket.socket, tuple[float, Callable[[], None], object]] = {}
        try:
            while True:
                with self._lock:
                    new, self._new = self._new, []
                    if not new and not waiting:
                        self._stop(wake_r)
                        return
                    hurried = set(self._hurried)
                deadline = time.monotonic() + LINGER
                for sock, done, owner in new:
                    try:
                        selector.register(sock, selectors.EVENT_READ)
                    except (OSError, ValueError):
                        self._done(sock, done, owner)
                        continue
                    waiting[sock] = (deadline, done, owner)
                now = time.monotonic()
                for sock, (_at, done, owner) in list(waiting.items()):
                    if owner in hurried:
                        waiting[sock] = (now, done, owner)
                if not waiting:
                    continue
                timeout = min(at for at, _, _ in waiting.values()) - time.monotonic()
                for key, _ in selector.select(max(timeout, 0.0)):
                    ready = key.fileobj
                    if ready is wake_r:
                        _drain(wake_r)
                    elif isinstance(ready, socket.socket) and _drain(ready):
                        selector.unregister(ready)
                        self._done(ready, *waiting.pop(ready)[1:])
                now = time.monotonic()
                for sock, (at, done, owner) in list(waiting.items()):
                    if at <= now:
                        selector.unregister(sock)
                        del waiting[sock]
                        self._done(sock, done, owner)
        finally:
            selector.close()
            with self._lock:
                left, self._new = self._new, []
                if self._thread is threading.current_thread():  # ended by a failure
                    self._stop(wake_r)
            # Only after a failure: nothing may keep its share of the budget.
            for sock, (_, done, owner) in waiting.items():
                self._done(sock, done, owner)
            for sock, done, owner in left:
                self._done(sock, done, owner)

    def _stop(self, wake_r: socket.socket) -> None:
        """Forget this thread and close its wake pair; called under the lock."""
        wake_r.close()
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        self._thread = None
        self._idle.notify_all()


def _drain(sock: socket.socket) -> bool:
    """Read what is there; True once the peer closed (or the socket failed)."""
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return True


def _finish(sock: socket.socket, done: Callable[[], None]) -> None:
    sock.close()
    try:
        done()
    except Exception:  # pragma: no cover - done gives budget back, which does not fail
        log.exception("giving back a closed connection failed")


def finish_now(owner: object, timeout: float = 2.0) -> bool:
    """Close ``owner``'s closing sockets now, and wait until they are (``timeout`` at most).

    A pool calls it as it closes: it opens nothing more, so its budget needs no waiting
    for the server, and nothing it opened may stay open after.
    """
    closer = _instance
    return True if closer is None else closer.finish_now(owner, timeout)


_instance: _Closer | None = None
_instance_lock = threading.Lock()


def _closer() -> _Closer:
    global _instance
    closer = _instance
    if closer is None:
        with _instance_lock:
            closer = _instance
            if closer is None:
                closer = _instance = _Closer()
    return closer


def _forget_in_child() -> None:
    # The parent's thread did not come along; its sockets are the parent's to finish.
    global _instance, _instance_lock
    _instance = None
    _instance_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
