"""What the httpx transports do with httpx's and httpcore's own objects.

Requests in httpx's form, the connection trace that times each phase, the translation of
httpx exceptions into rag-llm's, the streamed bodies, and the reading and trimming of
httpcore's pool: its connections' counts, expiry and idle ones.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import ModuleType
from typing import Any

from rag_llm import errors
from rag_llm.observability.stats import ClientStats
from rag_llm.transport import (
    ConnectionCounts,
    Request,
    TransportSettings,
    declared_length,
    pool_timeout_error,
    response_too_large,
)
from rag_llm.transport._shared import EndpointLimits
from rag_llm.transport._translate import ErrorTranslator

__all__ = ["AsyncStream", "ConnectionTrace", "SyncStream", "Translator", "apply_expiry",
           "connection_counts", "keep_alive_header", "own_limits", "read_capped",
           "read_capped_sync", "take_expired", "take_idle", "to_httpx_request"]


class ConnectionTrace:
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


class Translator(ErrorTranslator):
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
        self.catches = (self.all,)

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


def to_httpx_request(module: ModuleType, request: Request, timeouts: dict[str, float],
             trace: Any) -> Any:
    if request.timeout is not None:
        timeouts = {phase: min(seconds, request.timeout) for phase, seconds in timeouts.items()}
    return module.Request(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        extensions={"timeout": timeouts, "trace": trace},
    )


def connection_counts(pool: Any) -> ConnectionCounts:
    connections = pool.connections
    idle = sum(1 for c in connections if c.is_idle())
    return ConnectionCounts(active=len(connections) - idle, idle=idle)


def keep_alive_header(headers: Any) -> bytes | None:
    """The ``Keep-Alive`` header's value, if any.

    Called on every response. httpx's headers are a list, not a dict: ``Headers.get``
    costs 1.5-2.5 us when the header is absent (a list comprehension, then a KeyError);
    scanning the lower-cased names directly costs 0.25-0.45 us.
    """
    for _, name, value in headers._list:
        if name == b"keep-alive":
            return bytes(value)
    return None


def apply_expiry(pool: Any, seconds: float) -> float | None:
    """Make new and current connections expire ``seconds`` after going idle.

    httpcore stamps each connection's expiry when it goes idle and checks it both when it
    hands out an idle connection and in ``take_expired``, so lowering the stamps is
    enough for no connection idle longer than ``seconds`` to be reused. Returns the
    soonest moment an idle connection expires (None if none is idle).
    """
    soonest: float | None = None
    with pool._optional_thread_lock:
        pool._keepalive_expiry = seconds
        for connection in pool._connections:
            connection._keepalive_expiry = seconds  # passed on once connected
            inner = getattr(connection, "_connection", None)
            if inner is None:
                continue
            before = inner._keepalive_expiry
            if before is not None and before > seconds:
                inner._keepalive_expiry = seconds
                if inner._expire_at is not None:
                    inner._expire_at -= before - seconds
            at = inner._expire_at
            if at is not None and (soonest is None or at < soonest):
                soonest = at
    return soonest


def take_idle(pool: Any, most: int) -> list[Any]:
    """Remove up to ``most`` idle connections, under the pool's lock, for the caller to close."""
    with pool._optional_thread_lock:
        # An idle connection may already be promised to a request that has not started.
        promised = {id(r.connection) for r in getattr(pool, "_requests", ())}
        idle = [c for c in pool._connections
                if c.is_idle() and id(c) not in promised][:most]
        for connection in idle:
            pool._connections.remove(connection)
    return idle


def own_limits(settings: TransportSettings) -> EndpointLimits:
    return EndpointLimits(settings.limits.max_connections, settings.timeouts.pool)


def take_expired(pool: Any) -> list[Any]:
    """Remove idle connections that expired or were closed by the server, under the pool's lock.

    httpcore only prunes when a request arrives; without this, an idle pool would keep
    sockets open long past ``keepalive_expiry``.
    """
    with pool._optional_thread_lock:
        expired = [c for c in pool._connections if c.is_idle() and c.has_expired()]
        for connection in expired:
            pool._connections.remove(connection)
    return expired


async def read_capped(response: Any, request: Request, settings: TransportSettings) -> bytes:
    """The whole body, refused past ``max_response_bytes``: by its ``content-length``
    before reading (httpcore reads no further than that), else counted as it arrives."""
    limit = settings.max_response_bytes
    declared = declared_length(response.headers)
    if declared is not None:
        if declared > limit:
            raise response_too_large(settings, request, declared)
        return bytes(await response.aread())
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise response_too_large(settings, request)
        chunks.append(chunk)
    return b"".join(chunks)


def read_capped_sync(response: Any, request: Request, settings: TransportSettings) -> bytes:
    """Sync twin of :func:`read_capped`."""
    limit = settings.max_response_bytes
    declared = declared_length(response.headers)
    if declared is not None:
        if declared > limit:
            raise response_too_large(settings, request, declared)
        return bytes(response.read())
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise response_too_large(settings, request)
        chunks.append(chunk)
    return b"".join(chunks)


class AsyncStream:
    def __init__(self, response: Any, request: Request, translate: Translator) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def aiter_lines(self) -> AsyncIterator[str]:
        with self._translate.around(self._request):
            async for line in self._response.aiter_lines():
                yield line

    async def aread(self) -> bytes:
        with self._translate.around(self._request):
            return await read_capped(self._response, self._request, self._translate.settings)


class SyncStream:
    def __init__(self, response: Any, request: Request, translate: Translator) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def iter_lines(self) -> Iterator[str]:
        with self._translate.around(self._request):
            yield from self._response.iter_lines()

    def read(self) -> bytes:
        with self._translate.around(self._request):
            return read_capped_sync(self._response, self._request, self._translate.settings)
