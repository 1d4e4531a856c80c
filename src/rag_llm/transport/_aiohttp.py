"""An async transport on aiohttp, the fastest pure-Python async HTTP client.

aiohttp's connector has a connection cap but no cap on idle connections and no pool
timeout of its own (its ``connect`` timeout mixes waiting for the pool with connecting).
So requests are admitted by a fair semaphore of ``max_connections`` slots, waited for up
to ``pool_timeout``, and a connector subclass closes idle connections beyond
``max_keepalive_connections``. aiohttp has no write timeout: sending is bounded by
``read_timeout`` together with waiting for the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import hdrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from rag_llm import errors
from rag_llm.observability.stats import ClientStats
from rag_llm.transport import (
    Backend,
    ConnectionCounts,
    Request,
    Response,
    SyncTransport,
    TransportSettings,
    declared_length,
    pool_timeout_error,
    response_too_large,
)
from rag_llm.transport._counting import IdleExpiry
from rag_llm.transport._linger import close_then, hold_socket
from rag_llm.transport._shared import (
    ConnectionBudget,
    ConnectionWaitTimeout,
    EndpointLimits,
    pool_deadline,
)
from rag_llm.transport._tls import ssl_context
from rag_llm.transport._translate import ErrorTranslator

__all__ = ["AiohttpBackend", "AiohttpTransport"]

# The pool's reaper prunes at least this often: an idle connection due to expire later
# than this is left to it; one due sooner gets a timer of its own.
_REAP_HORIZON = 1.0
# aiohttp expires a connection strictly after its deadline: wake just past it.
_PAST_DEADLINE = 0.002


class _CountedHandler(ResponseHandler):
    """aiohttp's connection protocol, reporting when the connection opened and why it closed.

    Attributes carry a ``_rag_`` prefix: aiohttp's own (``_eof`` among them) must not be
    shadowed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: ClientStats,
                 expiry: IdleExpiry) -> None:
        super().__init__(loop)
        self._rag_stats = stats
        self._rag_expiry = expiry
        self._rag_last_io = time.monotonic()
        self._rag_server_eof = False
        # Set by the connector when its idle cleanup closes this connection for expiry.
        self.rag_expired = False
        # The endpoint's budget this connection counts in, once the connector hands it over.
        self._rag_budget: ConnectionBudget | None = None
        self._rag_lost = False
        # aiohttp drops ``transport`` on close(); the socket is still wanted after that.
        self._rag_transport: asyncio.BaseTransport | None = None

    def counted_in(self, budget: ConnectionBudget) -> None:
        """Count this connection in ``budget`` until it is lost."""
        if self._rag_lost:
            budget.give_back()
        else:
            self._rag_budget = budget

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # after the TLS handshake, for https
        self._rag_transport = transport
        self._rag_stats.connection_opened()

    def data_received(self, data: bytes) -> None:
        self._rag_last_io = time.monotonic()
        super().data_received(data)

    def eof_received(self) -> None:
        self._rag_server_eof = True
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            reason = "error"
        elif self._rag_server_eof:
            reason = "server_closed"
        elif self.rag_expired or (
                time.monotonic() - self._rag_last_io >= self._rag_expiry.seconds):
            reason = "expired"
        else:
            reason = "client"
        self._rag_stats.connection_closed(reason)
        self._rag_lost = True
        budget, self._rag_budget = self._rag_budget, None
        transport, self._rag_transport = self._rag_transport, None
        if budget is not None:
            # The loop closes the socket as this returns: unless the server closed first,
            # hold it open until the server has closed its side too (see _linger).
            held = None if self._rag_server_eof or transport is None else hold_socket(
                transport.get_extra_info("socket"))
            if held is None:
                budget.give_back()
            else:
                close_then(held, budget.give_back, budget)
        super().connection_lost(exc)


class _PoolConnector(aiohttp.TCPConnector):
    """A connector that trims idle connections to ``max_idle`` and counts connections.

    The one place that reaches into aiohttp's connector internals (``_conns``,
    ``_acquired``, ``_factory``, ``_cleanup``); the pool tests guard it.
    """

    def __init__(self, *, max_idle: int, stats: ClientStats, expiry: IdleExpiry,
                 budget: ConnectionBudget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rag_budget = budget
        self._max_idle = max_idle
        self._grace = min(1.0, expiry.configured)
        self._rag_idle = expiry
        self._factory = functools.partial(  # type: ignore[assignment]
            _CountedHandler, loop=self._loop, stats=stats, expiry=expiry
        )

    def learn_keep_alive(self, hint: str) -> None:
        """Take a server's ``Keep-Alive`` header into account.

        aiohttp checks ``_keepalive_timeout`` both when it takes an idle connection for a
        request and in ``_cleanup``, so lowering it is enough for no connection idle longer
        than that to be reused.
        """
        if self._rag_idle.learn(hint) and self._keepalive_timeout is not None:
            self._keepalive_timeout = self._rag_idle.seconds

    async def _create_connection(self, req: Any, traces: Any,
                                 timeout: Any) -> ResponseHandler:  # noqa: ASYNC109
        """Take room in the endpoint's connection budget, then connect."""
        budget = self._rag_budget
        await budget.take()
        try:
            proto = await super()._create_connection(req, traces, timeout)
        except BaseException:
            budget.give_back()
            raise
        if isinstance(proto, _CountedHandler):
            proto.counted_in(budget)
        else:  # pragma: no cover - every connection comes from our factory
            budget.give_back()
        return proto

    def evict_idle(self) -> None:
        """Close the connection idle longest: another client of the endpoint needs room."""
        if not self._conns:
            return
        t0, key, proto = min(((t0, key, proto) for key, conns in self._conns.items()
                              for proto, t0 in conns), key=lambda item: item[0])
        conns = self._conns[key]
        conns.remove((proto, t0))
        if not conns:
            del self._conns[key]
        proto.close()  # its budget is given back once the server has closed too

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def active_count(self) -> int:
        return len(self._acquired)

    def _cleanup(self) -> None:
        """aiohttp's idle cleanup, first marking the connections it closes for expiry, so
        that they are counted as expired rather than inferred from their last read."""
        timeout = self._keepalive_timeout
        if timeout is not None:
            deadline = time.monotonic() - timeout  # aiohttp's own is a moment later
            for conns in self._conns.values():
                for proto, use_time in conns:
                    if use_time < deadline and isinstance(proto, _CountedHandler):
                        proto.rag_expired = True
        super()._cleanup()

    def prune(self) -> None:
        """Close idle connections that expired, that the server closed, or that are surplus.

        Surplus idle connections (beyond ``max_idle``) are closed only once they have sat
        idle for ``grace`` seconds: under load a released connection is taken again within
        moments, and closing it at release would churn connections.
        """
        if not self._conns:
            return
        self._cleanup()
        self._trim_surplus()
        if self._rag_idle.seconds < self._rag_idle.configured:
            self._rag_clean_at_expiry()

    def _trim_surplus(self) -> None:
        surplus = self.idle_count() - self._max_idle
        if surplus <= 0:
            return
        deadline = time.monotonic() - self._grace
        oldest = sorted(((t0, key, proto) for key, conns in self._conns.items()
                         for proto, t0 in conns if t0 <= deadline), key=lambda item: item[0])
        for t0, key, proto in oldest[:surplus]:
            conns = self._conns[key]
            conns.remove((proto, t0))
            if not conns:
                del self._conns[key]
            proto.close()

    def _rag_clean_at_expiry(self) -> None:
        """Reschedule aiohttp's own cleanup to just after the soonest idle expiry.

        Only when that comes before the reaper's next prune: the reaper's interval follows
        ``keepalive_expiry``, not a server's shorter timeout, and without this an expired
        connection could stay open until the server closes it. ``_cleanup`` reschedules
        itself afterwards, and ``close()`` cancels the handle.
        """
        timeout = self._keepalive_timeout
        if timeout is None or not self._conns:
            return
        at = min(t0 for conns in self._conns.values() for _, t0 in conns) + timeout
        delay = at - time.monotonic()
        if delay >= _REAP_HORIZON:
            return
        if self._cleanup_handle is not None:
            self._cleanup_handle.cancel()
        self._cleanup_handle = self._loop.call_later(
            max(delay, 0.0) + _PAST_DEADLINE, _cleanup, weakref.ref(self)
        )


def _cleanup(connector: weakref.ref[_PoolConnector]) -> None:
    """Runs aiohttp's idle cleanup without the timer keeping the connector alive."""
    alive = connector()
    if alive is not None:
        alive._cleanup()


class _RequestTrace:
    """Per-request connection facts gathered from aiohttp's trace signals."""

    __slots__ = ("connect_started", "reused", "stats")

    def __init__(self, stats: ClientStats) -> None:
        self.stats = stats
        self.reused = False
        self.connect_started = 0.0


async def _on_reuse(session: Any, context: Any, params: Any) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, _RequestTrace):
        trace.reused = True


async def _on_create_start(session: Any, context: Any, params: Any) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, _RequestTrace):
        trace.connect_started = time.monotonic()


async def _on_create_end(session: Any, context: Any, params: Any) -> None:
    trace = context.trace_request_ctx
    if isinstance(trace, _RequestTrace):
        trace.stats.connect_timed(time.monotonic() - trace.connect_started)


def _trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_connection_reuseconn.append(_on_reuse)
    config.on_connection_create_start.append(_on_create_start)
    config.on_connection_create_end.append(_on_create_end)
    config.freeze()
    return config


async def _read_capped(response: aiohttp.ClientResponse, request: Request,
                       settings: TransportSettings) -> bytes:
    """The whole body, refused past ``max_response_bytes``.

    With a ``content-length`` within it aiohttp reads no further than that, so the fast
    ``read()`` is safe; a chunked or close-delimited body is counted as it arrives.
    """
    limit = settings.max_response_bytes
    declared = declared_length(response.headers)
    if declared is not None:
        if declared > limit:
            raise response_too_large(settings, request, declared)
        return await response.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise response_too_large(settings, request)
        chunks.append(chunk)
    return b"".join(chunks)


class _Stream:
    def __init__(self, response: aiohttp.ClientResponse, request: Request,
                 translate: _Translator) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def aiter_lines(self) -> AsyncIterator[str]:
        with self._translate.around(self._request):
            async for raw in self._response.content:
                # As the SSE standard and httpx decode: an invalid byte becomes U+FFFD.
                yield raw.decode("utf-8", "replace").rstrip("\r\n")

    async def aread(self) -> bytes:
        with self._translate.around(self._request):
            return await _read_capped(self._response, self._request, self._translate.settings)


class _Translator(ErrorTranslator):
    """Maps aiohttp exceptions to rag-llm's, naming provider and endpoint."""

    # aiohttp's socket read timeouts are TimeoutErrors; a body it cannot parse (a stream
    # line over its 512 KiB limit among them) raises its HttpProcessingError.
    catches = (aiohttp.ClientError, TimeoutError, HttpProcessingError)

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings

    def __call__(self, exc: BaseException, request: Request) -> errors.RagLLMError:
        s = self.settings
        where = {"provider": s.provider, "endpoint": request.endpoint}
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return errors.ConnectTimeoutError(
                f"connecting took longer than connect_timeout={s.timeouts.connect:g}s", **where
            )
        if isinstance(exc, TimeoutError):  # aiohttp's socket read timeouts are TimeoutErrors
            return errors.ReadTimeoutError(
                f"no data within read_timeout={s.timeouts.read:g}s", **where
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return errors.ConnectError(f"cannot connect: {exc.os_error or exc}", **where)
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                      | aiohttp.ClientOSError):
            return errors.ConnectionLostError(f"connection lost: {exc!r}", **where)
        if isinstance(exc, LineTooLong):  # its message holds the line: not shown
            return errors.MalformedResponseError(
                detail="a line of the body is longer than aiohttp reads (512 KiB)", **where)
        if isinstance(exc, HttpProcessingError):
            return errors.MalformedResponseError(
                detail=f"the body cannot be read ({type(exc).__name__})", **where)
        return errors.TransportError(f"{type(exc).__name__}: {exc}", **where)


class AiohttpTransport:
    """A pooled aiohttp session bound to the running event loop."""

    def __init__(self, settings: TransportSettings, stats: ClientStats,
                 shared: EndpointLimits | None = None) -> None:
        limits, timeouts = settings.limits, settings.timeouts
        self._settings = settings
        self._stats = stats
        self._translate = _Translator(settings)
        # Shared with the endpoint's other clients: calls in flight and connections open.
        self._limits = shared if shared is not None else EndpointLimits(
            limits.max_connections, timeouts.pool)
        self._loop = asyncio.get_running_loop()
        self._closed = False
        keep = limits.keepalive_expiry > 0 and limits.max_keepalive_connections > 0
        self._idle = IdleExpiry(limits.keepalive_expiry)
        self._connector = _PoolConnector(
            max_idle=limits.max_keepalive_connections,
            stats=stats,
            expiry=self._idle,
            budget=self._limits.connections,
            limit=limits.max_connections,
            limit_per_host=0,
            keepalive_timeout=limits.keepalive_expiry if keep else None,
            force_close=not keep,
            ssl=ssl_context(settings.verify),
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=timeouts.connect, sock_read=timeouts.read
            ),
            trace_configs=[_trace_config()],
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            raise_for_status=False,
        )
        self._limits.connections.register(self)

    async def _acquire_slot(self, request: Request) -> float | None:
        """Take a call slot of the endpoint; the pool deadline it waited under, if it did."""
        started = time.monotonic()
        self._stats.wait_started()
        try:
            return await self._limits.admit(self)
        except TimeoutError:
            raise pool_timeout_error(self._settings, request) from None
        finally:
            self._stats.wait_ended(time.monotonic() - started)

    def _release_slot(self) -> None:
        limits = self._limits
        limits.requests.release(self)  # its connection is idle: its own waiters first
        if limits.connections.wanted:
            self._connector.evict_idle()

    def release_idle(self) -> None:
        """Close an idle connection on this transport's loop: another client needs it."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: so are its connections
            self._loop.call_soon_threadsafe(self._connector.evict_idle)

    async def _open(self, request: Request, deadline: float | None) -> aiohttp.ClientResponse:
        """``_send`` under the pool ``deadline`` the call waited under, if it did."""
        if deadline is None:
            return await self._send(request)
        token = pool_deadline.set(deadline)
        try:
            return await self._send(request)
        finally:
            pool_deadline.reset(token)

    async def _send(self, request: Request) -> aiohttp.ClientResponse:
        """Send ``request``; resend once if a reused connection was dropped before a response."""
        for attempt in (1, 2):
            trace = _RequestTrace(self._stats)
            try:
                response = await self._session.request(
                    request.method, request.url, headers=request.headers,
                    data=request.content, trace_request_ctx=trace,
                    timeout=self._session.timeout if request.timeout is None
                    else self._capped(request),
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 1 and trace.reused:
                    self._stats.request_resent()
                    continue
                raise self._translate(exc, request) from exc
            except self._translate.catches as exc:
                raise self._translate(exc, request) from exc
            except ConnectionWaitTimeout:
                raise pool_timeout_error(self._settings, request) from None
            hint = response.headers.get(hdrs.KEEP_ALIVE)  # one lookup when absent
            if hint is not None and hint != self._idle.hint:
                self._connector.learn_keep_alive(hint)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _capped(self, request: Request) -> aiohttp.ClientTimeout:
        cap = request.timeout or 0.0
        timeouts = self._settings.timeouts
        return aiohttp.ClientTimeout(total=None, connect=None,
                                     sock_connect=min(timeouts.connect, cap),
                                     sock_read=min(timeouts.read, cap))

    async def send(self, request: Request) -> Response:
        deadline = await self._acquire_slot(request)
        try:
            response = await self._open(request, deadline)
            try:
                with self._translate.around(request):
                    content = await _read_capped(response, request, self._settings)
            except BaseException:
                response.close()  # what is left unread must not reach the next request
                raise
            finally:
                response.release()
            return Response(response.status, response.headers, content)
        finally:
            self._release_slot()

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[_Stream]:
        deadline = await self._acquire_slot(request)
        try:
            response = await self._open(request, deadline)
            try:
                yield _Stream(response, request, self._translate)
            finally:
                response.release()
        finally:
            self._release_slot()

    async def prune(self) -> None:
        self._connector.prune()

    def connections(self) -> ConnectionCounts:
        return ConnectionCounts(active=self._connector.active_count(),
                                idle=self._connector.idle_count())

    async def aclose(self) -> None:
        self._closed = True
        self._limits.connections.unregister(self)
        await self._session.close()


class AiohttpBackend:
    """aiohttp for async; it has no sync client, so sync requests go through ``sync``."""

    def __init__(self, name: str, sync: Backend) -> None:
        self.name = name
        self.async_library = "aiohttp"
        self.sync_library = sync.sync_library
        self._sync = sync

    def open_async(self, settings: TransportSettings, stats: ClientStats,
                   limits: EndpointLimits | None = None) -> AiohttpTransport:
        if settings.http2:
            raise errors.ConfigError("http2", True, "is not supported by aiohttp; use "
                                     "transport='httpx2' (or 'auto', which does) for HTTP/2")
        return AiohttpTransport(settings, stats, limits)

    def open_sync(self, settings: TransportSettings, stats: ClientStats,
                  limits: EndpointLimits | None = None) -> SyncTransport:
        return self._sync.open_sync(settings, stats, limits)
