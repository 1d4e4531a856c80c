"""Persistent HTTP clients of one provider: lazy creation, loop and fork ownership, close.

A :class:`ClientPool` owns one sync transport per process and one async transport per
event loop, each created on first use under a lock and reused for every request. They
share one :class:`~rag_llm.transport.EndpointLimits`: ``max_connections`` bounds the calls
in flight and the connections open of all of them together, not of each.

Ownership rules, and why:

* An async transport belongs to the loop that created it. A second loop (two
  ``asyncio.run()`` calls, a test framework's loop per test) gets its own, and the first
  is closed while its loop shuts down its async generators, so no socket outlives its loop
  and nothing raises "Event loop is closed".
* A forked child never touches its parent's sockets: after ``fork()`` every pool forgets
  the inherited transports without closing them (closing would send TLS close_notify on a
  socket the parent still uses) and opens its own on first use.
* Idle connections are closed when they pass ``keepalive_expiry`` or when the server has
  already closed them, by a reaper, not only when the next request happens to arrive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import os
import threading
import warnings
import weakref
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from rag_llm.errors import ProviderClosedError
from rag_llm.observability.events import get_logger
from rag_llm.observability.stats import (
    ClientStats,
    ClientStatsSnapshot,
    Ledger,
    merge_client_stats,
)
from rag_llm.transport import (
    AsyncTransport,
    Backend,
    EndpointLimits,
    SyncTransport,
    TransportSettings,
)
from rag_llm.transport._linger import finish_now

__all__ = [
    "PROBE",
    "TRAFFIC",
    "ClientPool",
    "ClientSnapshot",
    "PoolSnapshot",
    "PoolState",
    "all_snapshots",
    "counted_stats",
    "live_pools",
    "merge_pools",
]

# A pool's role: it carries a provider's calls, or its active health checks.
TRAFFIC: Final = "traffic"
PROBE: Final = "probe"

_log = get_logger()
# Transports inherited across fork(): kept referenced so they are never closed or
# garbage-collected in the child, which would disturb the parent's connections.
_inherited: list[object] = []
_live_pools: weakref.WeakSet[ClientPool] = weakref.WeakSet()
# Every pool's counters, kept past the pool's life so exported counters never go down.
_counters: Ledger[dict[str, ClientStats], ClientStatsSnapshot] = Ledger(
    lambda stats: [s.snapshot(recent=False) for s in stats.values()], merge_client_stats)


class PoolState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ClientSnapshot:
    """One client (``"sync"`` or ``"async"``, across event loops): connections and stats."""

    client: str
    library: str
    open: bool
    active: int
    idle: int
    stats: ClientStatsSnapshot


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A plain view of a pool: its state, limits and the connections of each client.

    ``endpoint`` names the provider's endpoint the pool connects to and ``role`` says
    what for: ``"traffic"`` (calls) or ``"probe"`` (active health checks). A snapshot
    merged over several pools (:func:`merge_pools`) keeps them where all agree, else "".
    """

    provider: str
    transport: str
    state: str
    max_keepalive_connections: int
    max_connections: int
    keepalive_expiry: float
    clients: tuple[ClientSnapshot, ...]
    endpoint: str = ""
    role: str = TRAFFIC


class _LoopClient:
    """The async transport of one event loop, with its close guard and reaper task."""

    __slots__ = ("guard", "inherited", "loop", "provider", "reaper", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: AsyncTransport,
                 provider: str) -> None:
        self.loop = loop
        self.transport = transport
        self.provider = provider
        # True in a forked child: the parent's sockets, never to be closed here.
        self.inherited = False
        self.guard: AsyncGenerator[None, None] | None = None
        self.reaper: asyncio.Task[None] | None = None


def _reap_interval(keepalive_expiry: float) -> float:
    # At least once a second: a connection the server closed is noticed (and counted)
    # soon, not only when it would have expired.
    return min(max(keepalive_expiry / 4, 0.05), 1.0)


async def _reap_async(transport: AsyncTransport, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await transport.prune()
        except Exception as exc:  # a failed prune must not stop later ones
            _log.warning("connection_prune_failed", client="async", error=repr(exc))


def _reap_sync(transport: SyncTransport, stop: threading.Event, interval: float) -> None:
    # Holds the transport, never the pool, so an unclosed pool can still be collected.
    while not stop.wait(interval):
        try:
            transport.prune()
        except Exception as exc:
            _log.warning("connection_prune_failed", client="sync", error=repr(exc))


async def _loop_guard(pool_ref: weakref.ref[ClientPool], entry: _LoopClient,
                      ) -> AsyncGenerator[None, None]:
    """Suspends until closed: by the pool, by garbage collection, or by the loop's shutdown.

    An event loop closes every live async generator in ``shutdown_asyncgens()`` (which
    ``asyncio.run()`` calls) while it can still run I/O: the one moment a transport
    bound to that loop can be closed cleanly.
    """
    try:
        yield
    finally:
        if entry.reaper is not None:
            entry.reaper.cancel()
        pool = pool_ref()
        if pool is not None:
            pool._forget_loop(entry)
        if not entry.inherited:
            await _close_async(entry.transport, entry.provider)


async def _close_async(transport: AsyncTransport, provider: str) -> None:
    try:
        await transport.aclose()
    except Exception as exc:
        _log.error("connection_pool_close_failed", provider=provider, client="async",
                   error=repr(exc))
    else:
        _log.info("connection_pool_closed", provider=provider, client="async")


class ClientPool:
    """Lazily created, reused sync and async transports of one provider.

    ``endpoint`` and ``role`` label its snapshots (see :class:`PoolSnapshot`).
    """

    def __init__(self, settings: TransportSettings, backend: Backend, *, endpoint: str = "",
                 role: str = TRAFFIC) -> None:
        self._settings = settings
        self._backend = backend
        self.endpoint = endpoint
        self.role = role
        self._state = PoolState.UNOPENED
        self._sync: SyncTransport | None = None
        self._sync_reaper: threading.Thread | None = None
        self._sync_stop = threading.Event()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._reset_locks()
        self._reset_stats()
        self._reset_limits()
        _live_pools.add(self)

    def _reset_stats(self) -> None:
        self._stats = {
            client: ClientStats(self._settings.provider, client, self._library(client),
                                max_connections=self._settings.limits.max_connections,
                                slow_request_s=self._settings.slow_request_s)
            for client in ("sync", "async")
        }
        _counters.track(self, self._stats)

    def _reset_limits(self) -> None:
        # One count for every client of the endpoint, across loops and threads.
        self._limits = EndpointLimits(self._settings.limits.max_connections,
                                      self._settings.timeouts.pool)

    @property
    def limits(self) -> EndpointLimits:
        """The counts of calls in flight and connections open that all clients share."""
        return self._limits

    def _reset_locks(self) -> None:
        # _sync_lock guards sync transport creation; _loops_lock guards the per-loop
        # tables, which threads running different loops share.
        self._sync_lock = threading.Lock()
        self._loops_lock = threading.Lock()

    @property
    def provider(self) -> str:
        return self._settings.provider

    @property
    def settings(self) -> TransportSettings:
        return self._settings

    @property
    def state(self) -> PoolState:
        return self._state

    def __repr__(self) -> str:
        return f"<ClientPool provider={self.provider!r} state={self._state.value}>"

    def _check_open(self) -> None:
        if self._state is PoolState.CLOSED:
            raise ProviderClosedError(
                f"{self.provider}: the connection pool is closed; create a new provider"
            )

    def _created(self, client: str) -> None:
        limits = self._settings.limits
        _log.info(
            "connection_pool_created",
            provider=self.provider,
            client=client,
            transport=self._library(client),
            max_keepalive_connections=limits.max_keepalive_connections,
            max_connections=limits.max_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )

    # -- async -------------------------------------------------------------------

    async def async_transport(self) -> AsyncTransport:
        """The transport of the running loop, created on first use under an ``asyncio.Lock``."""
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is not None and self._state is PoolState.OPEN:
            return entry.transport
        self._check_open()
        async with self._loop_lock(loop):
            entry = self._loops.get(loop)
            if entry is None:
                entry = await self._open_loop_client(loop)
        return entry.transport

    def _loop_lock(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        with self._loops_lock:
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
            return lock

    async def _open_loop_client(self, loop: asyncio.AbstractEventLoop) -> _LoopClient:
        self._check_open()
        self._drop_dead_loops()
        entry = _LoopClient(loop, self._backend.open_async(self._settings, self._stats["async"],
                                                            self._limits),
                            self.provider)
        entry.guard = _loop_guard(weakref.ref(self), entry)
        await entry.guard.asend(None)  # registers the guard with the loop's shutdown hooks
        entry.reaper = loop.create_task(
            _reap_async(entry.transport, _reap_interval(self._settings.limits.keepalive_expiry)),
            name=f"rag_llm-pool-reaper-{self.provider}",
        )
        with self._loops_lock:
            closed = self._state is PoolState.CLOSED
            if not closed:
                self._loops[loop] = entry
                self._state = PoolState.OPEN
        if closed:  # close() ran while this transport was being opened
            await _finish(entry)
            self._check_open()
        self._created("async")
        return entry

    def _forget_loop(self, entry: _LoopClient) -> None:
        with self._loops_lock:
            if self._loops.get(entry.loop) is entry:
                del self._loops[entry.loop]

    def _drop_dead_loops(self) -> None:
        """Forget transports of loops closed without shutting down their async generators."""
        with self._loops_lock:
            dead = [loop for loop in self._loops if loop.is_closed()]
            for loop in dead:
                del self._loops[loop]
        if dead:
            warnings.warn(
                f"{self.provider}: an event loop was closed without shutdown_asyncgens(); "
                "its connections could not be closed cleanly (use asyncio.run() or "
                "await provider.aclose() before closing the loop)",
                ResourceWarning,
                stacklevel=3,
            )

    # -- sync --------------------------------------------------------------------

    def sync_transport(self) -> SyncTransport:
        """The process's sync transport, created on first use under a ``threading.Lock``."""
        transport = self._sync
        if transport is not None and self._state is PoolState.OPEN:
            return transport
        with self._sync_lock:
            self._check_open()
            if self._sync is None:
                self._sync = self._backend.open_sync(self._settings, self._stats["sync"],
                                                     self._limits)
                self._sync_stop.clear()
                self._sync_reaper = threading.Thread(
                    target=_reap_sync,
                    args=(self._sync, self._sync_stop,
                          _reap_interval(self._settings.limits.keepalive_expiry)),
                    name=f"rag_llm-pool-reaper-{self.provider}",
                    daemon=True,
                )
                self._sync_reaper.start()
                with self._loops_lock:
                    if self._state is PoolState.UNOPENED:
                        self._state = PoolState.OPEN
                self._created("sync")
            return self._sync

    def _close_sync(self) -> None:
        with self._sync_lock:
            transport, self._sync = self._sync, None
            reaper, self._sync_reaper = self._sync_reaper, None
        if transport is None:
            return
        self._sync_stop.set()
        if reaper is not None:
            reaper.join()
        try:
            transport.close()
        except Exception as exc:
            _log.error("connection_pool_close_failed", provider=self.provider, client="sync",
                       error=repr(exc))
        else:
            _log.info("connection_pool_closed", provider=self.provider, client="sync")

    # -- stats -------------------------------------------------------------------

    def stats(self, client: str) -> ClientStats:
        """The live counters of the ``"sync"`` or ``"async"`` client."""
        return self._stats[client]

    def snapshot(self) -> PoolSnapshot:
        """Limits, state, current connections and statistics, as a plain value."""
        by_client: dict[str, list[SyncTransport | AsyncTransport]] = {
            "sync": [self._sync] if self._sync is not None else [],
            "async": [entry.transport for entry in list(self._loops.values())],
        }
        clients = []
        for client, transports in by_client.items():
            held = [t.connections() for t in transports]
            clients.append(ClientSnapshot(
                client=client,
                library=self._library(client),
                open=bool(transports),
                active=sum(c.active for c in held),
                idle=sum(c.idle for c in held),
                stats=self._stats[client].snapshot(),
            ))
        limits = self._settings.limits
        return PoolSnapshot(
            provider=self.provider,
            transport=self._backend.name,
            state=self._state.value,
            max_keepalive_connections=limits.max_keepalive_connections,
            max_connections=limits.max_connections,
            keepalive_expiry=limits.keepalive_expiry,
            clients=tuple(clients),
            endpoint=self.endpoint,
            role=self.role,
        )

    def _library(self, client: str) -> str:
        return self._backend.async_library if client == "async" else self._backend.sync_library

    # -- close -------------------------------------------------------------------

    def _take_loop_clients(self) -> list[_LoopClient]:
        for stats in self._stats.values():
            stats.shutting_down = True
        with self._loops_lock:
            self._state = PoolState.CLOSED
            entries = list(self._loops.values())
            self._loops.clear()
        return entries

    async def aclose(self) -> None:
        """Close every transport; idempotent. In-flight requests on them fail."""
        if self._state is PoolState.CLOSED:
            return
        current = asyncio.get_running_loop()
        for entry in self._take_loop_clients():
            if entry.loop is current:
                await _finish(entry)
            else:
                await asyncio.wrap_future(_close_elsewhere(entry))
        # Always through the lock: a sync transport may be being created right now.
        await asyncio.to_thread(self._close_sync_and_wait)

    def close(self) -> None:
        """Close every transport from sync code; idempotent."""
        if self._state is PoolState.CLOSED:
            return
        for entry in self._take_loop_clients():
            future = _close_elsewhere(entry)
            if not _in_loop(entry.loop):
                future.result()
        self._close_sync_and_wait()

    def _close_sync_and_wait(self) -> None:
        self._close_sync()
        # Closed connections wait for the server's close before their sockets go (see
        # transport._linger); a closed pool opens nothing more, so its own need not wait,
        # and once it is closed none of its sockets is open.
        finish_now(self._limits.connections)

    def _after_fork_in_child(self) -> None:
        for entry in self._loops.values():
            entry.inherited = True
            _inherited.append(entry)
            if entry.reaper is not None:
                entry.reaper.cancel()
        if self._sync is not None:
            _inherited.append(self._sync)
        self._loops = {}
        self._loop_locks = weakref.WeakKeyDictionary()
        self._sync = None
        self._sync_reaper = None
        self._sync_stop = threading.Event()
        self._reset_locks()
        self._reset_stats()  # the child's connections are its own
        self._reset_limits()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._state is not PoolState.OPEN or (self._sync is None and not self._loops):
            return
        _warn(f"unclosed {self!r}: call close() or aclose()", ResourceWarning, source=self)
        # Close what can be closed from here; each loop's transport is closed by that loop
        # when it finalizes the collected guard.
        self._sync_stop.set()
        if self._sync is not None:
            with contextlib.suppress(Exception):
                self._sync.close()


async def _finish(entry: _LoopClient) -> None:
    if entry.guard is not None:
        await entry.guard.aclose()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    return _running_loop() is loop


def _close_elsewhere(entry: _LoopClient) -> concurrent.futures.Future[None]:
    """Close ``entry`` on its own loop; the future is done once it is closed.

    A loop running in another thread closes it itself; an idle loop is run just long
    enough to close it, unless this thread already runs a loop.
    """
    loop = entry.loop
    if loop.is_running():
        return asyncio.run_coroutine_threadsafe(_finish(entry), loop)
    if not loop.is_closed() and _running_loop() is None:
        loop.run_until_complete(_finish(entry))
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    done.set_result(None)
    return done


def live_pools() -> list[ClientPool]:
    """Every pool of this process that has not been collected, closed ones included."""
    return list(_live_pools)


def all_snapshots() -> list[PoolSnapshot]:
    """A snapshot of every live pool: what metrics and the dashboard show by default."""
    return [pool.snapshot() for pool in live_pools()]


def counted_stats() -> list[ClientStatsSnapshot]:
    """The counters of every pool this process has had, collected ones folded by label.

    Unlike :func:`all_snapshots`, nothing here ever goes down: what Prometheus counters
    are read from. Recent latencies are left out.
    """
    return _counters.readings()


_STATE_ORDER: Final = (PoolState.OPEN.value, PoolState.UNOPENED.value)


def _merge_clients(a: ClientSnapshot, b: ClientSnapshot) -> ClientSnapshot:
    (stats,) = merge_client_stats([a.stats, replace(b.stats, provider=a.stats.provider)])
    return ClientSnapshot(client=a.client, library=b.library, open=a.open or b.open,
                          active=a.active + b.active, idle=a.idle + b.idle, stats=stats)


def _merge_group(group: list[PoolSnapshot]) -> PoolSnapshot:
    # Limits are configured per pool: shown as a pool that is not closed has them.
    limits = next((s for s in reversed(group) if s.state != PoolState.CLOSED.value), group[0])
    states = {s.state for s in group}
    clients: dict[str, ClientSnapshot] = {}
    for snapshot in group:
        for client in snapshot.clients:
            old = clients.get(client.client)
            clients[client.client] = client if old is None else _merge_clients(old, client)
    endpoints = {s.endpoint for s in group}
    roles = {s.role for s in group}
    return replace(
        limits,
        state=next((s for s in _STATE_ORDER if s in states), PoolState.CLOSED.value),
        clients=tuple(clients.values()),
        endpoint=endpoints.pop() if len(endpoints) == 1 else "",
        role=roles.pop() if len(roles) == 1 else "")


def merge_pools(snapshots: Iterable[PoolSnapshot]) -> list[PoolSnapshot]:
    """One snapshot per provider name, summing its pools' connections and statistics.

    The state is ``open`` if any pool is, else ``unopened`` if any is, else ``closed``;
    limits are those of a pool still open. Every per-provider view (``pool_stats()``,
    ``/health``, ``/metrics``, the dashboard) merges through here.
    """
    groups: dict[str, list[PoolSnapshot]] = {}
    for snapshot in snapshots:
        groups.setdefault(snapshot.provider, []).append(snapshot)
    return [_merge_group(group) for group in groups.values()]


def _reset_pools_in_child() -> None:
    _counters.forget_totals()
    for pool in list(_live_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_in_child)
