"""An estimate of the connections hyper's pool holds, which pyreqwest does not show."""

from __future__ import annotations

import threading
import time
from collections import deque

from rag_llm.observability.stats import ClientStats
from rag_llm.transport import ConnectionCounts

__all__ = ["PoolModel"]

HTTP2: str = "HTTP/2.0"  # pyreqwest's name for the version a response came over


class PoolModel:
    """An estimate of hyper's pool for one client, from the calls that go through it.

    HTTP/1.1 rules: a call takes an idle connection if one has not expired, else opens
    one; a call that ends well returns its connection to the idle list unless that holds
    ``max_idle`` already; one that fails loses it. What it cannot see: connections hyper
    opens in the background while an idle one comes back first, servers closing idle
    connections, and hyper's own resends.

    HTTP/2 rules (``multiplexed``): every call shares one connection, opened by the first
    call and lost only with a connection-level failure (``end(lost=True)``); it expires
    once no call has used it for ``expiry``. hyper opens that one connection for a burst
    of first calls too (counted at nginx: 1 for 16, then 128, concurrent calls). A
    response over HTTP/1.1 (a server that does not offer ``h2``, or plain ``http://``)
    turns the model to HTTP/1.1's rules for good. Thread-safe.
    """

    __slots__ = ("_active", "_idle", "_lock", "_max_idle", "_shared", "_stats", "expiry",
                 "multiplexed")

    def __init__(self, stats: ClientStats, max_idle: int, expiry: float, *,
                 multiplexed: bool = False) -> None:
        self._stats = stats
        self._max_idle = max_idle if expiry > 0 else 0
        self.expiry = expiry
        self.multiplexed = multiplexed
        self._lock = threading.Lock()
        self._idle: deque[float] = deque()  # when each idle connection went idle, oldest first
        self._active = 0
        # HTTP/2: when the shared connection went idle (math.inf while in use), or None.
        self._shared: float | None = None

    def _expire(self, now: float) -> int:
        expired = 0
        while self._idle and now - self._idle[0] >= self.expiry:
            self._idle.popleft()
            expired += 1
        if self._shared is not None and now - self._shared >= self.expiry:
            self._shared = None
            expired += 1
        return expired

    def start(self) -> bool:
        """A call begins; True if it is taken to reuse an idle connection."""
        with self._lock:
            expired = self._expire(time.monotonic())
            if self.multiplexed:
                reused = self._shared is not None
                self._shared = float("inf")
            else:
                reused = bool(self._idle)
                if reused:
                    self._idle.pop()  # hyper hands out the most recently idle first
            self._active += 1
        for _ in range(expired):
            self._stats.connection_closed("expired")
        if not reused:
            self._stats.connection_opened()
        return reused

    def spoke(self, version: str) -> None:
        """A response came over ``version``: anything but HTTP/2 ends the multiplexing."""
        if self.multiplexed and version != HTTP2:
            with self._lock:
                if not self.multiplexed:
                    return
                self.multiplexed = False
                # The shared connection was this call's own; the model cannot tell which
                # other calls in flight opened one, so it counts them from here on.
                self._shared = None

    def replaced(self) -> None:
        """The reused connection turned out closed by the server; the resend opens one."""
        self._stats.connection_closed("server_closed")
        self._stats.connection_opened()

    def end(self, ok: bool, *, lost: bool = False) -> None:
        """The call ended; ``ok`` if its connection can be reused (the body was read),
        ``lost`` if its failure was the connection's (connecting, or the connection cut)."""
        with self._lock:
            self._active -= 1
            if self.multiplexed:
                idle = self._shared is not None and not self._active
                # Without keep-alive (max_idle 0) hyper closes it once no call uses it.
                closed = self._shared is not None and (lost or (idle and not self._max_idle))
                if closed:
                    self._shared = None
                elif idle:
                    self._shared = time.monotonic()
                reason = "error" if lost else "client"
            else:
                closed = not (ok and len(self._idle) < self._max_idle)
                if not closed:
                    self._idle.append(time.monotonic())
                reason = "client" if ok else "error"
        if closed:
            self._stats.connection_closed(reason)

    def prune(self) -> None:
        with self._lock:
            expired = self._expire(time.monotonic())
        for _ in range(expired):
            self._stats.connection_closed("expired")

    def counts(self) -> ConnectionCounts:
        with self._lock:
            now = time.monotonic()
            idle = sum(1 for at in self._idle if now - at < self.expiry)
            if self._shared is not None:
                busy = self._active > 0
                return ConnectionCounts(active=1 if busy else 0,
                                        idle=idle + (not busy and now - self._shared
                                                     < self.expiry))
            return ConnectionCounts(active=self._active, idle=idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = len(self._idle), deque()
            idle += self._shared is not None
            self._shared = None
        for _ in range(idle):
            self._stats.connection_closed("client")
