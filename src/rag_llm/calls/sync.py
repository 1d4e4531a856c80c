"""Endpoint state shared by every process: breakers opened and health verdicts, in Redis.

With ``state`` pointing at a Redis, each endpoint has a small hash,
``{prefix}:{<provider>/<endpoint>}:endpoint`` (see :mod:`rag_llm.state._scripts`), that
holds the verdicts of the processes: ``breaker`` "open" until the opener's ``open_until``,
and ``health`` "healthy" or "unhealthy" from the process that runs the endpoint's active
checks. Each verdict lapses by Redis time; the hash expires with the last of them.

Nothing here touches Redis on the call path. A breaker's transition is queued and written
by one background thread per provider; the call path only compares a timestamp and, once
per ``state_sync_interval``, wakes that thread, which reads each endpoint's hash (one round
trip each) into a view the balancer reads lock-free. An endpoint open or unhealthy
elsewhere is thus avoided here within one interval, until it is shared as closed or
healthy, or its entry lapses. While Redis is unavailable the last view stands until its
entries lapse by this process's clock, and the local breakers go on alone.

Active health checks run in one process at a time: before each check of an endpoint, its
checking thread takes or renews a lease (``...:health:lease``, SET NX PX) and checks only
while it holds it; the holder shares its verdict after every check. Without Redis, every
process checks for itself.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from typing import Final

from rag_llm.errors import StateUnavailableError
from rag_llm.resilience.breaker import BreakerState, Transition
from rag_llm.state import StateBackend

__all__ = ["EndpointSync"]

# The syncing thread ends after this long without work; the next call starts it again.
_IDLE: Final = 30.0


class EndpointSync:
    """One provider's shared endpoint verdicts: what it publishes and what it has read."""

    def __init__(self, backend: StateBackend, endpoints: Iterable[str],
                 interval: float) -> None:
        self.backend = backend
        self.interval = interval
        self._token = secrets.token_hex(4)
        self._keys = {name: backend.key(name, "endpoint") for name in endpoints}
        self._lease_keys = {name: backend.key(name, "health:lease") for name in self._keys}
        # Read on every pick without a lock: entries are replaced whole.
        self._open_until: dict[str, float] = {}
        self._health: dict[str, tuple[bool, float]] = {}
        self._next_read = 0.0
        self._read_wanted = False
        self._pending: collections.deque[tuple[str, str, str, float]] = collections.deque()
        self._holding: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str:
        """This process's name in Redis (host, pid and a token of this provider's)."""
        return f"{socket.gethostname()}:{os.getpid()}:{self._token}"

    # -- the call path ----------------------------------------------------------------

    def due(self) -> None:
        """Wake the reader if the view is a sync interval old: a timestamp check."""
        now = time.monotonic()
        if now < self._next_read:
            return
        with self._lock:
            if now < self._next_read:
                return
            self._next_read = now + self.interval
            self._read_wanted = True
        self._kick()

    def verdict(self, name: str) -> bool | None:
        """False: open or unhealthy elsewhere; True: shared healthy; None: no word."""
        if not self._open_until and not self._health:
            return None
        now = time.monotonic()
        until = self._open_until.get(name)
        if until is not None and until > now:
            return False
        health = self._health.get(name)
        if health is not None and health[1] > now:
            return health[0]
        return None

    def shared_health(self, name: str) -> bool | None:
        """The health verdict shared for ``name`` (None: none, or lapsed)."""
        health = self._health.get(name)
        if health is not None and health[1] > time.monotonic():
            return health[0]
        return None

    def breaker_changed(self, name: str, transition: Transition) -> None:
        """Queue a local breaker's opening (until its open_until) or closing."""
        if transition.new is BreakerState.OPEN and transition.open_until is not None:
            ttl = transition.open_until - transition.at
            self._open_until[name] = time.monotonic() + ttl
            self._queue(name, "breaker", "open", ttl)
        elif transition.new is BreakerState.CLOSED:
            self._open_until.pop(name, None)
            self._queue(name, "breaker", "closed", 0.0)

    def _queue(self, name: str, kind: str, verdict: str, ttl: float) -> None:
        if self._stopped.is_set():
            return
        self._pending.append((name, kind, verdict, ttl))
        self._kick()

    def _kick(self) -> None:
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            thread = self._thread
            if self._stopped.is_set() or (thread is not None and thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"rag-llm-sync-{self.backend.provider}")
            self._thread.start()

    # -- health checks (their own threads) ---------------------------------------------

    def may_check(self, name: str, ttl: float) -> bool:
        """Whether this process runs ``name``'s health check now: it holds the lease, or
        Redis is unavailable and every process checks for itself."""
        self.due()
        backend = self.backend
        if not backend.usable():
            return True
        try:
            held = backend.hold_lease(self._lease_keys[name], self.holder, ttl)
        except StateUnavailableError:
            return True
        with self._lock:
            if held:
                self._holding.add(name)
            else:
                self._holding.discard(name)
        return held

    def holds(self, name: str) -> bool:
        return name in self._holding

    def share_health(self, name: str, healthy: bool, ttl: float) -> None:
        """Share the verdict of a check this process ran (from its checking thread)."""
        self._health[name] = (healthy, time.monotonic() + ttl)
        if not self.backend.usable():
            return
        # On failure its checks go on; the others' view of its last verdict lapses.
        with contextlib.suppress(StateUnavailableError):
            self.backend.publish(self._keys[name], "health",
                                 "healthy" if healthy else "unhealthy", ttl, self.holder)

    # -- the thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            if not self._wake.wait(_IDLE):
                with self._lock:
                    if not self._wake.is_set():
                        self._thread = None
                        return
            self._wake.clear()
            if self._stopped.is_set():
                return
            self._flush()
            if self._read_wanted:
                self._read_wanted = False
                self._read()

    def _flush(self) -> None:
        while self._pending:
            name, kind, verdict, ttl = self._pending.popleft()
            if not self.backend.usable():
                self._pending.clear()  # Redis is away: these verdicts go unshared
                return
            try:
                self.backend.publish(self._keys[name], kind, verdict, ttl, self.holder)
            except StateUnavailableError:
                self._pending.clear()
                return

    def _read(self) -> None:
        backend = self.backend
        if not backend.usable():
            return
        for name, key in self._keys.items():
            try:
                shared = backend.read_verdicts(key)
            except StateUnavailableError:
                return  # the last view stands until its entries lapse
            now = time.monotonic()
            if shared.breaker == "open":
                self._open_until[name] = now + shared.breaker_left
            else:
                self._open_until.pop(name, None)
            if shared.health is not None:
                self._health[name] = (shared.health == "healthy", now + shared.health_left)
            else:
                self._health.pop(name, None)
        backend.synced_at = time.monotonic()

    def stop(self) -> None:
        """Stop the thread, write what is queued, and hand back the health leases held."""
        with self._lock:
            self._stopped.set()
            thread, self._thread = self._thread, None
            holding, self._holding = set(self._holding), set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.backend.config.timeout * 4 + 1.0)
        self._flush()
        for name in holding:
            if not self.backend.usable():
                break
            try:
                self.backend.let_go(self._lease_keys[name], self.holder)
            except StateUnavailableError:
                break  # it lapses by itself

    def abandon(self) -> None:
        """Stop without waiting or writing (the provider was collected unclosed)."""
        self._stopped.set()
        self._wake.set()
