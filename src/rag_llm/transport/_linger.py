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
from collections.abc import Callable
from typing import Any, Final

__all__ = ["LINGER", "close_then", "hold_socket"]

log = logging.getLogger(__name__)

# How long a closed connection waits for the server to close its side.
LINGER: Final = 1.0
# How long the closing thread waits for more work before it ends.
_IDLE: Final = 5.0
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


def close_then(sock: socket.socket, done: Callable[[], None]) -> None:
    """Half-close ``sock``; close it and call ``done`` once the server has closed too.

    At most :data:`LINGER` seconds later. Returns at once; ``done`` runs on the closing
    thread.
    """
    with contextlib.suppress(OSError):  # already shut, or reset: reading will say so
        sock.setblocking(False)
        sock.shutdown(socket.SHUT_WR)
    _closer().add(sock, done)


class _Closer:
    """One thread that waits for the server's close of half-closed sockets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: list[tuple[socket.socket, Callable[[], None]]] = []
        self._thread: threading.Thread | None = None
        self._idle_since: float | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def add(self, sock: socket.socket, done: Callable[[], None]) -> None:
        with self._lock:
            self._new.append((sock, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rag_llm-closer",
                                                daemon=True)
                self._thread.start()
                return
        with contextlib.suppress(OSError):  # a full wake pipe already wakes it
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        # Each waiting socket's deadline and what to call once it is closed.
        waiting: dict[socket.socket, tuple[float, Callable[[], None]]] = {}
        self._idle_since = None
        try:
            while True:
                with self._lock:
                    new, self._new = self._new, []
                    if not new and not waiting and self._idle_since is not None and (
                            time.monotonic() - self._idle_since >= _IDLE):
                        self._thread = None
                        return
                deadline = time.monotonic() + LINGER
                for sock, done in new:
                    try:
                        selector.register(sock, selectors.EVENT_READ)
                    except (OSError, ValueError):
                        _finish(sock, done)
                        continue
                    waiting[sock] = (deadline, done)
                self._idle_since = None if waiting else time.monotonic()
                timeout = (min(at for at, _ in waiting.values()) - time.monotonic()
                           if waiting else _IDLE)
                for key, _ in selector.select(max(timeout, 0.0)):
                    ready = key.fileobj
                    if ready is self._wake_r:
                        _drain(self._wake_r)
                    elif isinstance(ready, socket.socket) and _drain(ready):
                        selector.unregister(ready)
                        _finish(ready, waiting.pop(ready)[1])
                now = time.monotonic()
                for sock, (at, done) in list(waiting.items()):
                    if at <= now:
                        selector.unregister(sock)
                        del waiting[sock]
                        _finish(sock, done)
        finally:
            selector.close()
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                    left, self._new = self._new, []
                else:  # it ended idle, with nothing left
                    left = []
            # Only after a failure: nothing may keep its share of the budget.
            for sock, (_, done) in waiting.items():
                _finish(sock, done)
            for sock, done in left:
                _finish(sock, done)


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
