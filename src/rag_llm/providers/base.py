"""Providers: a pooled client plus an API adapter, with sync and async twins of each call.

The adapter builds every request and parses every response; the provider only sends,
through its :class:`~rag_llm.pool.ClientPool`, so sync and async share one code path.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from rag_llm.config import ProviderConfig
from rag_llm.errors import (
    ConnectTimeoutError,
    MalformedResponseError,
    RagLLMError,
    ReadTimeoutError,
    UpstreamError,
)
from rag_llm.observability.events import get_logger
from rag_llm.observability.stats import ClientStats
from rag_llm.pool import ClientPool, PoolSnapshot
from rag_llm.providers.batching import EmbeddingBatcher, split
from rag_llm.providers.openai import Message, OpenAIAPI, endpoint_of
from rag_llm.transport import (
    Request,
    Response,
    TransportSettings,
    get_backend,
    pool_timeout_error,
)

if TYPE_CHECKING:
    from rag_llm.resilience.adaptive import AdaptiveLimit, AdmissionGate

__all__ = [
    "BaseProvider",
    "ChatModel",
    "ChatProvider",
    "Embedder",
    "EmbeddingProvider",
    "as_texts",
]

_log = get_logger()


class Embedder(Protocol):
    """What the RAG pipeline needs of an embedding provider, pooled or in-process."""

    name: str

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]: ...

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]: ...

    async def aclose(self) -> None: ...

    def close(self) -> None: ...


class ChatModel(Protocol):
    """What the RAG pipeline needs of a chat provider."""

    name: str

    async def achat(self, messages: Sequence[Message], **params: Any) -> str: ...

    def astream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...

    def close(self) -> None: ...


class BaseProvider:
    """Owns one connection pool for one model endpoint; close it with ``aclose()``/``close()``."""

    kind = "provider"

    def __init__(self, config: ProviderConfig, api: OpenAIAPI) -> None:
        self.config = config
        self.api = api
        self.name = config.name
        self.pool = ClientPool(
            TransportSettings(
                provider=config.name,
                limits=config.limits,
                timeouts=config.timeouts,
                http2=config.http2,
                verify=config.verify,
                slow_request_s=config.slow_request_seconds,
            ),
            get_backend(config.transport, http2=config.http2),
        )
        self._closed = False
        # With adaptive_concurrency, async calls pass a gate whose limit follows the upstream
        # (imported only then: the resilience package costs ~50 ms to import).
        self._adaptive: AdaptiveLimit | None = None
        if config.adaptive_concurrency:
            from rag_llm.resilience.adaptive import AdaptiveLimit, AdaptivePolicy

            self._adaptive = AdaptiveLimit(AdaptivePolicy(
                max_limit=config.limits.max_connections,
                initial_limit=max(config.limits.max_keepalive_connections, 1),
            ))
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AdmissionGate] = (
            weakref.WeakKeyDictionary())

    @property
    def max_keepalive_connections(self) -> int:
        return self.config.limits.max_keepalive_connections

    @property
    def max_connections(self) -> int:
        return self.config.limits.max_connections

    @property
    def keepalive_expiry(self) -> float:
        return self.config.limits.keepalive_expiry

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self.name!r} model={self.config.model!r} "
                f"base_url={endpoint_of(self.config.base_url)!r} pool={self.pool.state.value}>")

    def pool_stats(self) -> PoolSnapshot:
        """Limits, connections and exact statistics of both clients, as a plain value."""
        return self.pool.snapshot()

    def _call(self, operation: str, client: str) -> _Call:
        return _Call(self.pool.stats(client), operation)

    async def _asend(self, call: _Call, request: Request) -> Response:
        async with self._admitted(request) as admission:
            response = await (await self.pool.async_transport()).send(request)
            call.status = admission.status = response.status
        return response

    @asynccontextmanager
    async def _admitted(self, request: Request) -> AsyncIterator[_Admission]:
        """Hold a slot of the adaptive gate (if any) for one call, and report how it went."""
        admission = _Admission()
        if self._adaptive is None:
            yield admission
            return
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            from rag_llm.resilience.adaptive import AdmissionGate

            gate = self._gates[loop] = AdmissionGate(self._adaptive)
        try:
            async with asyncio.timeout(self.config.timeouts.pool):
                started = await gate.acquire()
        except TimeoutError:
            raise pool_timeout_error(self.pool.settings, request) from None
        dropped = False
        try:
            yield admission
        except (ReadTimeoutError, ConnectTimeoutError):
            dropped = True
            raise
        finally:
            dropped = dropped or admission.status in _DROPPED_STATUSES
            gate.release(dropped=dropped, started=started)
            self.pool.stats("async").concurrency_limit = self._adaptive.limit

    def _send(self, call: _Call, request: Request) -> Response:
        response = self.pool.sync_transport().send(request)
        call.status = response.status
        return response

    async def aclose(self) -> None:
        """Close every pooled connection; idempotent."""
        await self.pool.aclose()
        self._log_closed()

    def close(self) -> None:
        """Sync twin of :meth:`aclose`."""
        self.pool.close()
        self._log_closed()

    def _log_closed(self) -> None:
        if not self._closed:
            self._closed = True
            _log.info("provider_closed", provider=self.name, kind=self.kind)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# Answers that mean the upstream is over capacity: the adaptive limit backs off.
_DROPPED_STATUSES: Final = frozenset({429, 503})


class _Admission:
    """The status of one admitted call, for the adaptive limit."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


class _Call:
    """Times one call and records its outcome: the HTTP status, or what went wrong."""

    __slots__ = ("_first", "_operation", "_started", "_stats", "status")

    def __init__(self, stats: ClientStats, operation: str) -> None:
        self._stats = stats
        self._operation = operation
        self._started = time.perf_counter()
        self._first = True
        self.status = 0

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = time.perf_counter() - self._started
        if exc is None:
            self._stats.request_done(self._operation, str(self.status), seconds)
        elif isinstance(exc, RagLLMError):
            self._stats.request_done(self._operation, _outcome(exc), seconds, exc)
        else:  # cancelled, or a stream abandoned by its reader
            self._stats.request_done(self._operation, "cancelled", seconds)

    def token(self) -> None:
        if self._first:
            self._first = False
            self._stats.first_token(time.perf_counter() - self._started)


def _outcome(exc: RagLLMError) -> str:
    if isinstance(exc, UpstreamError):
        return str(exc.status)
    if isinstance(exc, MalformedResponseError):
        return "malformed"
    return type(exc).__name__


def as_texts(texts: Sequence[str] | str) -> list[str]:
    """``texts`` as a list: a single string is one text; anything but strings is a TypeError."""
    if isinstance(texts, str):
        return [texts]
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, not {type(text).__name__}")
    return items


class EmbeddingProvider(BaseProvider):
    """Turns texts into vectors: ``await aembed(texts)`` or ``embed(texts)``.

    A list longer than ``max_batch_size`` goes out as several requests, concurrently for
    ``aembed``. With ``coalesce_window`` set, concurrent ``aembed`` calls also share
    requests (see :mod:`rag_llm.providers.batching`).
    """

    kind = "embedding"

    def __init__(self, config: ProviderConfig, api: OpenAIAPI) -> None:
        super().__init__(config, api)
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  EmbeddingBatcher] = weakref.WeakKeyDictionary()

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
        items = as_texts(texts)
        if not items:
            return []
        if self.config.coalesce_window is not None:
            return await self._batcher().embed(items)
        if len(items) <= self.config.max_batch_size:
            return await self._aembed_request(items)
        batches = await asyncio.gather(
            *(self._aembed_request(b) for b in split(items, self.config.max_batch_size)))
        return [vector for batch in batches for vector in batch]

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        items = as_texts(texts)
        return [vector for batch in split(items, self.config.max_batch_size)
                for vector in self._embed_request(batch)]

    def _batcher(self) -> EmbeddingBatcher:
        # One per loop, made in it: an event loop's futures cannot be shared.
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = EmbeddingBatcher(
                self._aembed_request, max_inputs=self.config.max_batch_size,
                window=self.config.coalesce_window or 0.0)
        return batcher

    async def _aembed_request(self, items: list[str]) -> list[list[float]]:
        request = self.api.embeddings_request(items)
        with self._call("embeddings", "async") as call:
            response = await self._asend(call, request)
            return self.api.parse_embeddings(request, response, len(items))

    def _embed_request(self, items: list[str]) -> list[list[float]]:
        request = self.api.embeddings_request(items)
        with self._call("embeddings", "sync") as call:
            return self.api.parse_embeddings(request, self._send(call, request), len(items))


class ChatProvider(BaseProvider):
    """Chat completions, whole (``achat``/``chat``) or streamed (``astream``/``stream``)."""

    kind = "llm"

    async def achat(self, messages: Sequence[Message], **params: Any) -> str:
        request = self.api.chat_request(messages, params)
        with self._call("chat", "async") as call:
            return self.api.parse_chat(request, await self._asend(call, request))

    def chat(self, messages: Sequence[Message], **params: Any) -> str:
        request = self.api.chat_request(messages, params)
        with self._call("chat", "sync") as call:
            return self.api.parse_chat(request, self._send(call, request))

    async def astream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[str]:
        """Yield text deltas as they arrive."""
        request = self.api.chat_request(messages, params, stream=True)
        with self._call("chat_stream", "async") as call:
            transport = await self.pool.async_transport()
            async with self._admitted(request) as admission, \
                    transport.stream(request) as response:
                call.status = admission.status = response.status
                if response.status >= 400:
                    raise self.api.error(request, response.status, response.headers,
                                         await response.aread())
                parser = self.api.stream_parser(request)
                # Read to the end of the body, past [DONE]: only a connection whose
                # response was read whole goes back to the pool.
                async for line in response.aiter_lines():
                    text = parser.feed(line)
                    if text is not None:
                        call.token()
                        yield text

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[str]:
        """Sync twin of :meth:`astream`."""
        request = self.api.chat_request(messages, params, stream=True)
        with self._call("chat_stream", "sync") as call, \
                self.pool.sync_transport().stream(request) as response:
            call.status = response.status
            if response.status >= 400:
                raise self.api.error(request, response.status, response.headers,
                                     response.read())
            parser = self.api.stream_parser(request)
            for line in response.iter_lines():  # to the end of the body, as in astream
                text = parser.feed(line)
                if text is not None:
                    call.token()
                    yield text
