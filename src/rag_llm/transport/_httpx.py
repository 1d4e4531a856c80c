"""Transports on httpx's API: pydantic's maintained ``httpx2`` (default) or ``httpx`` 0.28.

The transport is used directly, without ``httpx.Client``: rag-llm needs no redirects,
cookies or auth flows, and skipping them saves CPU on every request. Lower-layer
exceptions are translated here, once, into rag-llm's exception tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import ModuleType
from typing import Any

from rag_llm import errors
from rag_llm.observability.stats import ClientStats
from rag_llm.transport import (
    ConnectionCounts,
    Request,
    Response,
    TransportSettings,
    pool_timeout_error,
)
from rag_llm.transport._counting import (
    AsyncCountingBackend,
    IdleExpiry,
    SyncCountingBackend,
)
from rag_llm.transport._httpcore import (
    AsyncStream,
    ConnectionTrace,
    SyncStream,
    Translator,
    apply_expiry,
    connection_counts,
    keep_alive_header,
    own_limits,
    read_capped,
    read_capped_sync,
    take_expired,
    take_idle,
    to_httpx_request,
)
from rag_llm.transport._shared import ConnectionWaitTimeout, EndpointLimits, pool_deadline
from rag_llm.transport._tls import ssl_context

__all__ = ["HttpxBackend"]

# The pool's reaper prunes at least this often: a connection due to expire later than
# this is left to it; one due sooner gets a timer of its own (see ``_arm``).
_REAP_HORIZON = 1.0
# httpcore expires a connection strictly after its deadline: wake just past it.
_PAST_DEADLINE = 0.002


class _AsyncHttpxTransport:
    def __init__(self, module: ModuleType, settings: TransportSettings,
                 stats: ClientStats, limits: EndpointLimits | None = None) -> None:
        self._module = module
        self._settings = settings
        self._stats = stats
        # Shared with the endpoint's other clients: calls in flight and connections open.
        self._limits = limits if limits is not None else own_limits(settings)
        self._loop = asyncio.get_running_loop()
        self._translate = Translator(module, settings)
        self._timeouts = _timeouts(settings)
        self._transport = module.AsyncHTTPTransport(
            verify=ssl_context(settings.verify, settings.http2),
            http2=settings.http2,
            limits=_limits(module, settings),
            trust_env=False,
        )
        self._pool = self._transport._pool
        self._idle = IdleExpiry(settings.limits.keepalive_expiry)
        self._pool._network_backend = AsyncCountingBackend(
            self._pool._network_backend, stats, self._idle, self._limits.connections
        )
        self._closed = False
        # A prune due before the reaper's next one, when a server's timeout is short.
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at = 0.0
        self._wake_task: asyncio.Task[None] | None = None
        self._evictions: set[asyncio.Task[None]] = set()
        self._limits.connections.register(self)

    async def _open(self, request: Request) -> Any:
        """Take a call slot of the endpoint, then send ``request`` (see ``_send``).

        The slot is held until ``_done``; on failure it is given back here.
        """
        trace = ConnectionTrace(self._stats)
        try:
            deadline = await self._limits.admit(self)
        except TimeoutError:
            trace.end_wait()
            raise pool_timeout_error(self._settings, request) from None
        token = None if deadline is None else pool_deadline.set(deadline)
        try:
            return await self._send(request, trace)
        except BaseException:
            self._limits.requests.release()
            raise
        finally:
            if token is not None:
                pool_deadline.reset(token)

    async def _done(self) -> None:
        """The call's response is closed: give its slot back, and its connection if wanted."""
        limits = self._limits
        limits.requests.release(self)  # its connection is idle: its own waiters first
        if limits.connections.wanted:
            await self._evict_idle()

    async def _send(self, request: Request, trace: ConnectionTrace) -> Any:
        """Send ``request`` and return once response headers arrive.

        A request that failed on a reused connection before any response is resent once:
        the server closed that idle connection just as it was reused.
        """
        for attempt in (1, 2):
            if attempt == 2:
                trace = ConnectionTrace(self._stats)
            try:
                response = await self._transport.handle_async_request(
                    to_httpx_request(self._module, request, self._timeouts, trace.atrace)
                )
            except self._translate.stale as exc:
                if attempt == 1 and trace.resendable():
                    self._stats.request_resent()
                    continue
                raise self._translate(exc, request) from exc
            except self._translate.all as exc:
                raise self._translate(exc, request) from exc
            except ConnectionWaitTimeout:
                raise pool_timeout_error(self._settings, request) from None
            finally:
                trace.end_wait()
            hint = keep_alive_header(response.headers)
            if hint is not None and hint != self._idle.hint and self._idle.learn(hint):
                self._arm(apply_expiry(self._pool, self._idle.seconds))
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, request: Request) -> Response:
        response = await self._open(request)
        try:
            with self._translate.around(request):
                content = await read_capped(response, request, self._settings)
        finally:
            try:
                await response.aclose()
            finally:
                await self._done()
        return Response(response.status_code, response.headers, content)

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[AsyncStream]:
        response = await self._open(request)
        try:
            yield AsyncStream(response, request, self._translate)
        finally:
            try:
                await response.aclose()
            finally:
                await self._done()

    async def _evict_idle(self) -> None:
        """Give up an idle connection for another client (its budget comes back once the
        server has closed it too)."""
        for connection in take_idle(self._pool, 1):
            await connection.aclose()

    def release_idle(self) -> None:
        """Close an idle connection on this transport's loop: another client needs it."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: so are its connections
            self._loop.call_soon_threadsafe(self._start_eviction)

    def _start_eviction(self) -> None:
        if not self._closed:
            task = self._loop.create_task(self._evict_quietly())
            self._evictions.add(task)
            task.add_done_callback(self._evictions.discard)

    async def _evict_quietly(self) -> None:
        with contextlib.suppress(Exception):  # a failed close is the reaper's to log
            await self._evict_idle()

    async def prune(self) -> None:
        for connection in take_expired(self._pool):
            await connection.aclose()
        if self._idle.seconds < self._idle.configured:
            self._arm(apply_expiry(self._pool, self._idle.seconds))

    def _arm(self, at: float | None) -> None:
        """Prune again just after ``at`` if the reaper may come later than that.

        The reaper's interval follows ``keepalive_expiry``, not a server's shorter timeout;
        without this an expired connection could stay open until the server closes it.
        """
        if at is None or self._closed:
            return
        delay = at - time.monotonic()
        if delay >= _REAP_HORIZON or (self._wake is not None and self._wake_at <= at):
            return
        if self._wake is not None:
            self._wake.cancel()
        self._wake_at = at
        self._wake = asyncio.get_running_loop().call_later(
            max(delay, 0.0) + _PAST_DEADLINE, self._woken
        )

    def _woken(self) -> None:
        self._wake = None
        if not self._closed:
            self._wake_task = asyncio.get_running_loop().create_task(self._prune_quietly())

    async def _prune_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the reaper prunes again, and logs failures
            await self.prune()

    def connections(self) -> ConnectionCounts:
        return connection_counts(self._pool)

    async def aclose(self) -> None:
        self._closed = True
        self._limits.connections.unregister(self)
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        await self._transport.aclose()


class _SyncHttpxTransport:
    def __init__(self, module: ModuleType, settings: TransportSettings,
                 stats: ClientStats, limits: EndpointLimits | None = None) -> None:
        self._module = module
        self._settings = settings
        self._stats = stats
        self._limits = limits if limits is not None else own_limits(settings)
        self._translate = Translator(module, settings)
        self._timeouts = _timeouts(settings)
        self._transport = module.HTTPTransport(
            verify=ssl_context(settings.verify, settings.http2),
            http2=settings.http2,
            limits=_limits(module, settings),
            trust_env=False,
        )
        self._pool = self._transport._pool
        self._idle = IdleExpiry(settings.limits.keepalive_expiry)
        self._pool._network_backend = SyncCountingBackend(
            self._pool._network_backend, stats, self._idle, self._limits.connections
        )
        self._closed = False
        # A prune due before the reaper's next one, when a server's timeout is short.
        self._timer: threading.Timer | None = None
        self._timer_at = 0.0
        self._timer_lock = threading.Lock()
        self._limits.connections.register(self)

    def _open(self, request: Request) -> Any:
        """Sync twin of ``_AsyncHttpxTransport._open``."""
        trace = ConnectionTrace(self._stats)
        try:
            deadline = self._limits.admit_sync(self)
        except TimeoutError:
            trace.end_wait()
            raise pool_timeout_error(self._settings, request) from None
        token = None if deadline is None else pool_deadline.set(deadline)
        try:
            return self._send(request, trace)
        except BaseException:
            self._limits.requests.release()
            raise
        finally:
            if token is not None:
                pool_deadline.reset(token)

    def _done(self) -> None:
        limits = self._limits
        limits.requests.release(self)  # its connection is idle: its own waiters first
        if limits.connections.wanted:
            self._evict_idle()

    def release_idle(self) -> None:
        """Give up an idle connection (any thread): another client needs it.

        Closed here, in the caller's thread: once out of the pool nobody else uses it, a
        sync connection's close takes no lock, and it does not wait for the server (its
        budget comes back once the server has closed too, see ``_linger``).
        """
        if not self._closed and self._pool.connections:
            self._evict_idle()

    def _evict_idle(self) -> None:
        for connection in take_idle(self._pool, 1):
            with contextlib.suppress(Exception):  # a failed close is the reaper's
                connection.close()

    def _send(self, request: Request, trace: ConnectionTrace) -> Any:
        """Sync twin of ``_AsyncHttpxTransport._send``: resend once on a stale connection."""
        for attempt in (1, 2):
            if attempt == 2:
                trace = ConnectionTrace(self._stats)
            try:
                response = self._transport.handle_request(
                    to_httpx_request(self._module, request, self._timeouts, trace)
                )
            except self._translate.stale as exc:
                if attempt == 1 and trace.resendable():
                    self._stats.request_resent()
                    continue
                raise self._translate(exc, request) from exc
            except self._translate.all as exc:
                raise self._translate(exc, request) from exc
            except ConnectionWaitTimeout:
                raise pool_timeout_error(self._settings, request) from None
            finally:
                trace.end_wait()
            hint = keep_alive_header(response.headers)
            if hint is not None and hint != self._idle.hint and self._idle.learn(hint):
                self._arm(apply_expiry(self._pool, self._idle.seconds))
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, request: Request) -> Response:
        response = self._open(request)
        try:
            with self._translate.around(request):
                content = read_capped_sync(response, request, self._settings)
        finally:
            try:
                response.close()
            finally:
                self._done()
        return Response(response.status_code, response.headers, content)

    @contextmanager
    def stream(self, request: Request) -> Iterator[SyncStream]:
        response = self._open(request)
        try:
            yield SyncStream(response, request, self._translate)
        finally:
            try:
                response.close()
            finally:
                self._done()

    def prune(self) -> None:
        for connection in take_expired(self._pool):
            connection.close()
        if self._idle.seconds < self._idle.configured:
            self._arm(apply_expiry(self._pool, self._idle.seconds))

    def _arm(self, at: float | None) -> None:
        """Sync twin of ``_AsyncHttpxTransport._arm``, on a timer thread."""
        if at is None:
            return
        delay = at - time.monotonic()
        if delay >= _REAP_HORIZON:
            return
        with self._timer_lock:
            if self._closed or (self._timer is not None and self._timer_at <= at):
                return
            if self._timer is not None:
                self._timer.cancel()
            timer = threading.Timer(max(delay, 0.0) + _PAST_DEADLINE, self._woken)
            timer.daemon = True
            timer.name = "rag_llm-keepalive-timer"
            self._timer, self._timer_at = timer, at
            timer.start()

    def _woken(self) -> None:
        with self._timer_lock:
            if self._timer is threading.current_thread():
                self._timer = None
            if self._closed:
                return
        with contextlib.suppress(Exception):  # the reaper prunes again, and logs failures
            self.prune()

    def connections(self) -> ConnectionCounts:
        return connection_counts(self._pool)

    def close(self) -> None:
        self._limits.connections.unregister(self)
        with self._timer_lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._transport.close()


def _timeouts(settings: TransportSettings) -> dict[str, float]:
    t = settings.timeouts
    return {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.pool}


def _limits(module: ModuleType, settings: TransportSettings) -> Any:
    limits = settings.limits
    return module.Limits(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
    )


class HttpxBackend:
    """Backend for ``transport = "httpx2"`` or ``"httpx"`` (same API, different pool code)."""

    def __init__(self, library: str, *, name: str | None = None) -> None:
        if library not in ("httpx2", "httpx"):
            raise errors.ConfigError("transport", library, "is not an httpx library")
        self.name = name or library
        self.async_library = self.sync_library = library
        self._module = _import(library)

    def open_async(self, settings: TransportSettings, stats: ClientStats,
                   limits: EndpointLimits | None = None) -> _AsyncHttpxTransport:
        _check_http2(settings)
        return _AsyncHttpxTransport(self._module, settings, stats, limits)

    def open_sync(self, settings: TransportSettings, stats: ClientStats,
                  limits: EndpointLimits | None = None) -> _SyncHttpxTransport:
        _check_http2(settings)
        return _SyncHttpxTransport(self._module, settings, stats, limits)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise errors.ConfigError(
            "transport", name, f"needs the '{name}' package: pip install 'rag-llm[{name}]'"
        ) from None


def _check_http2(settings: TransportSettings) -> None:
    if settings.http2:
        try:
            importlib.import_module("h2")
        except ImportError:
            raise errors.ConfigError(
                "http2", True, "needs the 'h2' package: pip install 'rag-llm[http2]'"
            ) from None
