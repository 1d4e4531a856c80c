"""Transports on httpx's API: pydantic's maintained ``httpx2`` (default) or ``httpx`` 0.28.

The transport is used directly, without ``httpx.Client``: rag-llm needs no redirects,
cookies or auth flows, and skipping them saves CPU on every request. Lower-layer
exceptions are translated here, once, into rag-llm's exception tree.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
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
from rag_llm.transport._counting import AsyncCountingBackend, SyncCountingBackend
from rag_llm.transport._tls import ssl_context

__all__ = ["HttpxBackend"]


class _ConnectionTrace:
    """Follows one request through httpcore's trace events.

    ``reused`` stays true unless a new TCP connection was opened for the request, and
    ``answered`` turns true once response headers arrived: a failure on a reused connection
    before that is the server having closed an idle keep-alive connection, safe to resend.
    The time until a connection is assigned (a new one starts connecting, or request
    headers start on a reused one) is the request's wait for the pool.
    """

    __slots__ = ("_started", "_stats", "answered", "assigned", "reused")

    def __init__(self, stats: ClientStats) -> None:
        self._stats = stats
        self._started = time.monotonic()
        self.reused = True
        self.answered = False
        self.assigned = False
        stats.wait_started()

    def __call__(self, name: str, info: Mapping[str, Any]) -> None:
        if name.startswith("connection.connect_tcp.started"):
            self.reused = False
            self.end_wait()
        elif name.endswith("send_request_headers.started"):
            self.end_wait()
        elif name.endswith("receive_response_headers.complete"):
            self.answered = True

    async def atrace(self, name: str, info: Mapping[str, Any]) -> None:
        self(name, info)

    def end_wait(self) -> None:
        """Called at assignment, or when the request fails before it (e.g. pool timeout)."""
        if not self.assigned:
            self.assigned = True
            self._stats.wait_ended(time.monotonic() - self._started)

    def resendable(self) -> bool:
        return self.reused and not self.answered


class _Translator:
    """Maps httpx exceptions to rag-llm's, naming provider, endpoint and the limit to change."""

    def __init__(self, module: ModuleType, settings: TransportSettings) -> None:
        self.module = module
        self.settings = settings
        # Failures that may mean a stale keep-alive connection (no response yet).
        self.stale: tuple[type[BaseException], ...] = (
            module.RemoteProtocolError,
            module.ReadError,
            module.WriteError,
        )
        self.all: type[BaseException] = module.TransportError

    def __call__(self, exc: BaseException, request: Request) -> errors.RagLLMError:
        m, s = self.module, self.settings
        where = {"provider": s.provider, "endpoint": request.endpoint}
        if isinstance(exc, m.PoolTimeout):
            return pool_timeout_error(s, request)
        if isinstance(exc, m.ConnectTimeout):
            return errors.ConnectTimeoutError(
                f"connecting took longer than connect_timeout={s.timeouts.connect:g}s", **where
            )
        if isinstance(exc, m.ReadTimeout):
            return errors.ReadTimeoutError(
                f"no data within read_timeout={s.timeouts.read:g}s", **where
            )
        if isinstance(exc, m.WriteTimeout):
            return errors.WriteTimeoutError(
                f"sending took longer than write_timeout={s.timeouts.write:g}s", **where
            )
        if isinstance(exc, m.ConnectError):
            return errors.ConnectError(f"cannot connect: {exc}", **where)
        if isinstance(exc, self.stale):
            return errors.ConnectionLostError(f"connection lost: {exc}", **where)
        return errors.TransportError(f"{type(exc).__name__}: {exc}", **where)


def _request(module: ModuleType, request: Request, timeouts: dict[str, float],
             trace: Any) -> Any:
    return module.Request(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        extensions={"timeout": timeouts, "trace": trace},
    )


def _counts(pool: Any) -> ConnectionCounts:
    connections = pool.connections
    idle = sum(1 for c in connections if c.is_idle())
    return ConnectionCounts(active=len(connections) - idle, idle=idle)


def _take_expired(pool: Any) -> list[Any]:
    """Remove idle connections that expired or were closed by the server, under the pool's lock.

    httpcore only prunes when a request arrives; without this, an idle pool would keep
    sockets open long past ``keepalive_expiry``.
    """
    with pool._optional_thread_lock:
        expired = [c for c in pool._connections if c.is_idle() and c.has_expired()]
        for connection in expired:
            pool._connections.remove(connection)
    return expired


class _AsyncStream:
    def __init__(self, response: Any, request: Request, translate: _Translator) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def aiter_lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                yield line
        except self._translate.all as exc:
            raise self._translate(exc, self._request) from exc

    async def aread(self) -> bytes:
        try:
            return bytes(await self._response.aread())
        except self._translate.all as exc:
            raise self._translate(exc, self._request) from exc


class _SyncStream:
    def __init__(self, response: Any, request: Request, translate: _Translator) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def iter_lines(self) -> Iterator[str]:
        try:
            yield from self._response.iter_lines()
        except self._translate.all as exc:
            raise self._translate(exc, self._request) from exc

    def read(self) -> bytes:
        try:
            return bytes(self._response.read())
        except self._translate.all as exc:
            raise self._translate(exc, self._request) from exc


class _AsyncHttpxTransport:
    def __init__(self, module: ModuleType, settings: TransportSettings,
                 stats: ClientStats) -> None:
        self._module = module
        self._stats = stats
        self._translate = _Translator(module, settings)
        self._timeouts = _timeouts(settings)
        self._transport = module.AsyncHTTPTransport(
            verify=ssl_context(settings.verify, settings.http2),
            http2=settings.http2,
            limits=_limits(module, settings),
            trust_env=False,
        )
        self._pool = self._transport._pool
        self._pool._network_backend = AsyncCountingBackend(
            self._pool._network_backend, stats, settings.limits.keepalive_expiry
        )

    async def _open(self, request: Request) -> Any:
        """Send ``request`` and return once response headers arrive.

        A request that failed on a reused connection before any response is resent once:
        the server closed that idle connection just as it was reused.
        """
        for attempt in (1, 2):
            trace = _ConnectionTrace(self._stats)
            try:
                return await self._transport.handle_async_request(
                    _request(self._module, request, self._timeouts, trace.atrace)
                )
            except self._translate.stale as exc:
                if attempt == 1 and trace.resendable():
                    self._stats.request_resent()
                    continue
                raise self._translate(exc, request) from exc
            except self._translate.all as exc:
                raise self._translate(exc, request) from exc
            finally:
                trace.end_wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, request: Request) -> Response:
        response = await self._open(request)
        try:
            content = await response.aread()
        except self._translate.all as exc:
            raise self._translate(exc, request) from exc
        finally:
            await response.aclose()
        return Response(response.status_code, response.headers, content)

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[_AsyncStream]:
        response = await self._open(request)
        try:
            yield _AsyncStream(response, request, self._translate)
        finally:
            await response.aclose()

    async def prune(self) -> None:
        for connection in _take_expired(self._pool):
            await connection.aclose()

    def connections(self) -> ConnectionCounts:
        return _counts(self._pool)

    async def aclose(self) -> None:
        await self._transport.aclose()


class _SyncHttpxTransport:
    def __init__(self, module: ModuleType, settings: TransportSettings,
                 stats: ClientStats) -> None:
        self._module = module
        self._stats = stats
        self._translate = _Translator(module, settings)
        self._timeouts = _timeouts(settings)
        self._transport = module.HTTPTransport(
            verify=ssl_context(settings.verify, settings.http2),
            http2=settings.http2,
            limits=_limits(module, settings),
            trust_env=False,
        )
        self._pool = self._transport._pool
        self._pool._network_backend = SyncCountingBackend(
            self._pool._network_backend, stats, settings.limits.keepalive_expiry
        )

    def _open(self, request: Request) -> Any:
        """Sync twin of ``_AsyncHttpxTransport._open``: resend once on a stale connection."""
        for attempt in (1, 2):
            trace = _ConnectionTrace(self._stats)
            try:
                return self._transport.handle_request(
                    _request(self._module, request, self._timeouts, trace)
                )
            except self._translate.stale as exc:
                if attempt == 1 and trace.resendable():
                    self._stats.request_resent()
                    continue
                raise self._translate(exc, request) from exc
            except self._translate.all as exc:
                raise self._translate(exc, request) from exc
            finally:
                trace.end_wait()
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, request: Request) -> Response:
        response = self._open(request)
        try:
            content = response.read()
        except self._translate.all as exc:
            raise self._translate(exc, request) from exc
        finally:
            response.close()
        return Response(response.status_code, response.headers, content)

    @contextmanager
    def stream(self, request: Request) -> Iterator[_SyncStream]:
        response = self._open(request)
        try:
            yield _SyncStream(response, request, self._translate)
        finally:
            response.close()

    def prune(self) -> None:
        for connection in _take_expired(self._pool):
            connection.close()

    def connections(self) -> ConnectionCounts:
        return _counts(self._pool)

    def close(self) -> None:
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

    def open_async(self, settings: TransportSettings,
                   stats: ClientStats) -> _AsyncHttpxTransport:
        _check_http2(settings)
        return _AsyncHttpxTransport(self._module, settings, stats)

    def open_sync(self, settings: TransportSettings, stats: ClientStats) -> _SyncHttpxTransport:
        _check_http2(settings)
        return _SyncHttpxTransport(self._module, settings, stats)


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
