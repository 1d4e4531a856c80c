"""An estimate of the connections hyper's pool holds, which pyreqwest does not show."""

from __future__ import annotations

import threading
import time
from collections import deque

from rag_llm.observability.stats import ClientStats
from rag_llm.transport import ConnectionCounts

__all__ = ["PoolModel"]


class PoolModel:
    """An estimate of hyper's pool for one client, from the calls that go through it.

    HTTP/1.1 rules: a call takes an idle connection if one has not expired, else opens
    one; a call that ends well returns its connection to the idle list unless that holds
    ``max_idle`` already; one that fails loses it. What it cannot see: connections hyper
    opens in the background while an idle one comes back first, servers closing idle
    connections, and hyper's own resends. Thread-safe.
    """

    __slots__ = ("_active", "_idle", "_lock", "_max_idle", "_stats", "expiry")

    def __init__(self, stats: ClientStats, max_idle: int, expiry: float) -> None:
        self._stats = stats
        self._max_idle = max_idle if expiry > 0 else 0
        self.expiry = expiry
        self._lock = threading.Lock()
        self._idle: deque[float] = deque()  # when each idle connection went idle, oldest first
        self._active = 0

    def _expire(self, now: float) -> int:
        expired = 0
        while self._idle and now - self._idle[0] >= self.expiry:
            self._idle.popleft()
            expired += 1
        return expired

    def start(self) -> bool:
        """A call begins; True if it is taken to reuse an idle connection."""
        with self._lock:
            expired = self._expire(time.monotonic())
            reused = bool(self._idle)
            if reused:
                self._idle.pop()  # hyper hands out the most recently idle first
            self._active += 1
        for _ in range(expired):
            self._stats.connection_closed("expired")
        if not reused:
            self._stats.connection_opened()
        return reused

    def replaced(self) -> None:
        """The reused connection turned out closed by the server; the resend opens one."""
        self._stats.connection_closed("server_closed")
        self._stats.connection_opened()

    def end(self, ok: bool) -> None:
        """The call ended; ``ok`` if its connection can be reused (the body was read)."""
        with self._lock:
            self._active -= 1
            kept = ok and len(self._idle) < self._max_idle
            if kept:
                self._idle.append(time.monotonic())
        if not kept:
            self._stats.connection_closed("client" if ok else "error")

    def prune(self) -> None:
        with self._lock:
            expired = self._expire(time.monotonic())
        for _ in range(expired):
            self._stats.connection_closed("expired")

    def counts(self) -> ConnectionCounts:
        with self._lock:
            now = time.monotonic()
            idle = sum(1 for at in self._idle if now - at < self.expiry)
            return ConnectionCounts(active=self._active, idle=idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = len(self._idle), deque()
        for _ in range(idle):
            self._stats.connection_closed("client")
