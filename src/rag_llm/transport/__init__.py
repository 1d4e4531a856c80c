"""The seam between rag-llm and an HTTP library.

Providers build a :class:`Request` and read a :class:`Response`; a :class:`Backend` turns
pool settings into sync and async transports that send them. Which library sits behind
the seam is the ``transport`` setting; pool limits, timeouts and errors mean the same
thing whichever it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from rag_llm.config import PoolLimits, Timeouts
from rag_llm.errors import MalformedResponseError, PoolTimeoutError
from rag_llm.observability.stats import ClientStats
from rag_llm.transport._shared import EndpointLimits

__all__ = [
    "AsyncStreamResponse",
    "AsyncTransport",
    "Backend",
    "ConnectionCounts",
    "EndpointLimits",
    "Request",
    "Response",
    "SyncStreamResponse",
    "SyncTransport",
    "TransportSettings",
    "declared_length",
    "get_backend",
    "pool_timeout_error",
    "response_too_large",
]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, independent of the library that sends it."""

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None = None
    # Scheme, host, port and path only: what errors and events may show.
    endpoint: str = ""
    # Seconds that cap each of this request's connect, read and write timeouts: what is
    # left of the call's deadline, where that is shorter than they are (sync calls).
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response; header names are lower-case."""

    status: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True, slots=True)
class ConnectionCounts:
    """Connections a transport holds right now."""

    active: int
    idle: int


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """What a backend needs to open a transport for one provider."""

    provider: str
    limits: PoolLimits
    timeouts: Timeouts
    http2: bool
    verify: bool | str
    slow_request_s: float = 10.0
    # The most bytes of a whole body a transport reads; see ``response_too_large``.
    max_response_bytes: int = 256 * 1024 * 1024


class AsyncStreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    def aiter_lines(self) -> AsyncIterator[str]: ...

    async def aread(self) -> bytes: ...


class SyncStreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    def iter_lines(self) -> Iterator[str]: ...

    def read(self) -> bytes: ...


class AsyncTransport(Protocol):
    """A pooled async HTTP client bound to one event loop."""

    async def send(self, request: Request) -> Response: ...

    def stream(self, request: Request) -> AbstractAsyncContextManager[AsyncStreamResponse]: ...

    async def prune(self) -> None:
        """Close idle connections that expired or that the server already closed."""

    def connections(self) -> ConnectionCounts: ...

    async def aclose(self) -> None: ...


class SyncTransport(Protocol):
    """A pooled, thread-safe sync HTTP client."""

    def send(self, request: Request) -> Response: ...

    def stream(self, request: Request) -> AbstractContextManager[SyncStreamResponse]: ...

    def prune(self) -> None:
        """Close idle connections that expired or that the server already closed."""

    def connections(self) -> ConnectionCounts: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Opens the async and sync transports that a ``transport`` setting names.

    Transports opened with the same ``limits`` (one endpoint's clients: each event loop's
    and the sync one) share its count of calls in flight and of connections open, so
    ``max_connections`` bounds them together; without, a transport counts on its own.
    """

    name: str
    async_library: str
    sync_library: str

    def open_async(self, settings: TransportSettings, stats: ClientStats,
                   limits: EndpointLimits | None = None) -> AsyncTransport: ...

    def open_sync(self, settings: TransportSettings, stats: ClientStats,
                  limits: EndpointLimits | None = None) -> SyncTransport: ...


def pool_timeout_error(settings: TransportSettings, request: Request) -> PoolTimeoutError:
    """The error for a request that found no free connection: it names the limits to change."""
    return PoolTimeoutError(
        f"no pooled connection became free within pool_timeout={settings.timeouts.pool:g}s "
        f"(all max_connections={settings.limits.max_connections} busy); raise max_connections "
        "or pool_timeout, or lower the caller's concurrency",
        provider=settings.provider, endpoint=request.endpoint,
    )


def response_too_large(settings: TransportSettings, request: Request,
                       declared: int | None = None) -> MalformedResponseError:
    """The error for a body over ``max_response_bytes``: refused by its ``content-length``
    before a byte of it is read, or once it grows past the limit (the rest is not read)."""
    limit = settings.max_response_bytes
    how = (f"'s content-length {declared} is over" if declared is not None
           else " grew past")
    return MalformedResponseError(
        provider=settings.provider, endpoint=request.endpoint,
        detail=f"the body{how} max_response_bytes={limit}; raise max_response_bytes if "
               "answers this large are expected")


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The ``content-length`` a response declares, or None (chunked, or not a number)."""
    raw = headers.get("content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def get_backend(name: str, *, http2: bool = False) -> Backend:
    """The backend a ``transport`` setting names; libraries are imported only when chosen.

    ``auto`` is aiohttp for async (httpx2 when HTTP/2 is asked for, which aiohttp lacks)
    and httpx2 for sync; ``aiohttp`` is aiohttp for async and httpx2 for sync;
    ``pyreqwest`` is pyreqwest for both.
    """
    if name == "pyreqwest":
        from rag_llm.transport._pyreqwest import PyreqwestBackend

        return PyreqwestBackend()
    from rag_llm.transport._httpx import HttpxBackend

    if name == "auto" and http2:
        return HttpxBackend("httpx2", name="auto")
    if name in ("auto", "aiohttp"):
        from rag_llm.transport._aiohttp import AiohttpBackend

        return AiohttpBackend(name, sync=HttpxBackend("httpx2"))
    return HttpxBackend(name)
