"""Providers: the embedding and chat calls users make, over the call layer's router.

An adapter (:mod:`rag_llm.adapters`) builds every request and parses every response; the
call layer (:mod:`rag_llm.calls`) sends them, its sync code generated from its async code,
so sync and async calls take the same steps.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeVar

from rag_llm.adapters import AdapterFactory, APIAdapter, Message, StreamParser
from rag_llm.calls._async import sending as async_sending
from rag_llm.calls._sync import sending as sync_sending
from rag_llm.calls.batching import EmbeddingBatcher, estimate_tokens, split
from rag_llm.calls.record import CallRecord
from rag_llm.calls.relay import Relayed, RelayRequest, answer_to, relay_parser, relayed_response
from rag_llm.config import ProviderConfig
from rag_llm.errors import ProviderClosedError, UpstreamError
from rag_llm.observability.events import get_logger, load_logging
from rag_llm.pool import TRAFFIC, ClientPool, PoolSnapshot, merge_pools
from rag_llm.transport import Request, Response
from rag_llm.validation import redact_url

if TYPE_CHECKING:
    from rag_llm.calls.counts import RouterSnapshot
    from rag_llm.calls.router import Router

__all__ = [
    "BaseProvider",
    "ChatModel",
    "ChatProvider",
    "Embedder",
    "EmbeddingProvider",
    "as_texts",
]

_log = get_logger()
T = TypeVar("T")


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
    """Owns one connection pool per endpoint of one model; close it with ``aclose()``/``close()``.

    Every call goes through the provider's :class:`~rag_llm.calls.router.Router`:
    endpoint choice, circuit breakers, retries under a budget and one deadline.
    """

    kind = "provider"

    def __init__(self, config: ProviderConfig, api_class: AdapterFactory) -> None:
        self.config = config
        self.name = config.name
        # Imported here: the resilience policies are the costliest part of the import.
        from rag_llm.calls.router import Router

        self.router: Router = Router(config, api_class)
        _export_metrics()
        load_logging()
        # The first endpoint's adapter and pool: all there is with a single base_url.
        self.api = self.router.primary.api
        self.pool = self.router.primary.pool
        self._closed = False
        self._closing = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight_lock = threading.Lock()
        # Like an unclosed socket: collected while it holds connections or runs health
        # checks, it warns; it also stops those checks, whose threads never refer to it.
        finalizer = weakref.finalize(self, _collected, f"{type(self).__name__} {self.name!r}",
                                     self.router.release_when_collected())
        finalizer.atexit = False

    @property
    def max_keepalive_connections(self) -> int:
        return self.config.limits.max_keepalive_connections

    @property
    def max_connections(self) -> int:
        return self.config.limits.max_connections

    @property
    def keepalive_expiry(self) -> float:
        return self.config.limits.keepalive_expiry

    @property
    def pools(self) -> dict[str, ClientPool]:
        """Each endpoint's pool, by endpoint name."""
        return {name: upstream.pool for name, upstream in self.router.upstreams.items()}

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self.name!r} model={self.config.model!r} "
                f"base_url={redact_url(self.config.base_url)!r} pool={self.pool.state.value}>")

    def pool_stats(self) -> PoolSnapshot:
        """Limits, connections and exact statistics of the provider's clients.

        With several endpoints, their pools are summed (:func:`~rag_llm.pool.merge_pools`);
        :meth:`pools_stats` has each pool apart.
        """
        (merged,) = merge_pools(s for s in self.pools_stats() if s.role == TRAFFIC)
        return merged

    def pools_stats(self) -> list[PoolSnapshot]:
        """A snapshot of each pool: every endpoint's (role ``"traffic"``), then those of the
        active health checks (role ``"probe"``, provider ``"<name>-health"``)."""
        return [pool.snapshot() for pool in self.router.pools()]

    def routing_stats(self) -> RouterSnapshot:
        """Each endpoint's health, breaker, load and attempts; retries and local rejections."""
        return self.router.snapshot()

    def _call(self, operation: str, client: str) -> CallRecord:
        return CallRecord(self.pool.stats(client), operation)

    async def _asend(self, call: CallRecord, build: Callable[[APIAdapter], Request],
                     parse: Callable[[APIAdapter, Request, Response], T], cost: float) -> T:
        with self._tracked():
            return await async_sending.send(self.router, call, build, parse, cost)

    def _send(self, call: CallRecord, build: Callable[[APIAdapter], Request],
              parse: Callable[[APIAdapter, Request, Response], T], cost: float) -> T:
        with self._tracked():
            return sync_sending.send(self.router, call, build, parse, cost)

    def _tracked(self) -> _InFlight:
        """Count one call in flight while it runs; refused once shutdown has begun."""
        return _InFlight(self)

    # -- relayed calls: another client's requests, as it built them ------------------

    async def arelay(self, request: RelayRequest) -> Relayed[AsyncGenerator[str, None]]:
        """Send ``request`` through the router, its body as it is; the answer as it came: a
        2xx, or the error response that ended the retries (:mod:`rag_llm.calls.relay`).

        A streamed request's answer is open once this returns, retried only until its
        first line: read ``lines`` to the end or ``aclose()`` them. Failures that bring no
        answer raise rag-llm's errors, as every call's do.
        """
        if request.stream:
            return await self._arelay_stream(request)
        with self._call(request.label, "async") as call:
            try:
                return Relayed(await self._asend(call, request.build, relayed_response(call),
                                                 request.cost))
            except UpstreamError as exc:
                answer = answer_to(call, exc)
                if answer is None:
                    raise
                return Relayed(answer)

    def relay(self, request: RelayRequest) -> Relayed[Generator[str, None, None]]:
        """Sync twin of :meth:`arelay`: ``close()`` a stream's ``lines`` if left unread."""
        if request.stream:
            return self._relay_stream(request)
        with self._call(request.label, "sync") as call:
            try:
                return Relayed(self._send(call, request.build, relayed_response(call),
                                          request.cost))
            except UpstreamError as exc:
                answer = answer_to(call, exc)
                if answer is None:
                    raise
                return Relayed(answer)

    async def _arelay_stream(self, request: RelayRequest,
                             ) -> Relayed[AsyncGenerator[str, None]]:
        call = self._call(request.label, "async")
        lines = self._arelayed_lines(call, request)
        try:
            first = await anext(lines)
        except UpstreamError as exc:
            answer = answer_to(call, exc)
            if answer is None:
                raise
            return Relayed(answer)
        assert call.response is not None  # the stream's head, kept when it opened
        return Relayed(call.response, _aprepended(first, lines))

    async def _arelayed_lines(self, call: CallRecord,
                              request: RelayRequest) -> AsyncGenerator[str, None]:
        with call, self._tracked():
            async for line in async_sending.stream(self.router, call, request.build,
                                                   relay_parser, request.cost,
                                                   self.config.timeouts):
                yield line

    def _relay_stream(self, request: RelayRequest) -> Relayed[Generator[str, None, None]]:
        call = self._call(request.label, "sync")
        lines = self._relayed_lines(call, request)
        try:
            first = next(lines)
        except UpstreamError as exc:
            answer = answer_to(call, exc)
            if answer is None:
                raise
            return Relayed(answer)
        assert call.response is not None
        return Relayed(call.response, _prepended(first, lines))

    def _relayed_lines(self, call: CallRecord,
                       request: RelayRequest) -> Generator[str, None, None]:
        with call, self._tracked():
            yield from sync_sending.stream(self.router, call, request.build, relay_parser,
                                           request.cost, self.config.timeouts)

    async def awarmup(self) -> None:
        """Open ``warmup`` connections to each endpoint now, so first calls skip the handshake."""
        await self.router.awarmup(self.config.warmup)

    def warmup(self) -> None:
        """Sync twin of :meth:`awarmup`, for the sync client."""
        self.router.warmup(self.config.warmup)

    async def aclose(self) -> None:
        """Stop taking calls, let those in flight finish (``drain_timeout``), then close.

        Calls still running at the drain deadline are cancelled. Idempotent.
        """
        self._closing = True
        deadline = time.monotonic() + self.config.drain_timeout
        # Calls may run on other threads and loops, so the count is polled.
        while self._in_flight and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL)
        await self._cancel_stragglers()
        await self.router.aclose()
        self._log_closed()

    async def _cancel_stragglers(self) -> None:
        with self._in_flight_lock:
            tasks = list(self._tasks)
        current = asyncio.current_task()
        here = [t for t in tasks if t is not current and t.get_loop() is asyncio.get_running_loop()]
        for task in tasks:
            if task in here:
                task.cancel()
            elif task is not current and not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(task.cancel)
        if here:
            await asyncio.wait(here, timeout=_DRAIN_POLL * 10)
        if tasks:
            _log.warning("provider_calls_cancelled", provider=self.name, calls=len(tasks))

    def close(self) -> None:
        """Sync twin of :meth:`aclose`; sync calls still running at the drain deadline fail
        when their pool closes."""
        self._closing = True
        deadline = time.monotonic() + self.config.drain_timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(_DRAIN_POLL)
        with self._in_flight_lock:
            tasks = list(self._tasks)
        for task in tasks:
            if not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(task.cancel)
        self.router.close()
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


def _collected(label: str, release: Callable[[], bool],
               _warn: Callable[..., None] = warnings.warn) -> None:
    """A provider's finalizer: release what it can first, then warn if it held anything."""
    if release():
        _warn(f"unclosed {label}: call close() or aclose()", ResourceWarning, stacklevel=2)


class _InFlight:
    """One call counted in flight on its provider (and its task, to cancel at shutdown)."""

    __slots__ = ("_provider", "_task")

    def __init__(self, provider: BaseProvider) -> None:
        self._provider = provider
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        provider = self._provider
        loop = asyncio._get_running_loop()
        task = self._task = None if loop is None else asyncio.current_task(loop)
        with provider._in_flight_lock:
            if provider._closing:
                state = "closed; create a new provider" if provider._closed else "shutting down"
                raise ProviderClosedError(f"{provider.name}: the provider is {state} and "
                                          "takes no new calls")
            provider._in_flight += 1
            if task is not None:
                provider._tasks.add(task)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        provider = self._provider
        with provider._in_flight_lock:
            provider._in_flight -= 1
            if self._task is not None:
                provider._tasks.discard(self._task)


# How often a closing provider looks whether its calls have finished.
_DRAIN_POLL: Final = 0.01
_exported = False


def _export_metrics() -> None:
    """Put rag-llm's collectors in prometheus_client's default registry, once per process,
    unless the application gave its own (:func:`rag_llm.metrics.register`)."""
    global _exported
    if not _exported:
        _exported = True
        # Imported here, not at the top: the exporter sits above the providers, and
        # prometheus_client stays off the `import rag_llm` path.
        from rag_llm.metrics import register_default

        register_default()


async def _aprepended(first: str,
                      rest: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    try:
        yield first
        async for line in rest:
            yield line
    finally:
        await rest.aclose()


def _prepended(first: str, rest: Generator[str, None, None]) -> Generator[str, None, None]:
    try:
        yield first
        yield from rest
    finally:
        rest.close()


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
    requests (see :mod:`rag_llm.calls.batching`).
    """

    kind = "embedding"

    def __init__(self, config: ProviderConfig, api_class: AdapterFactory) -> None:
        super().__init__(config, api_class)
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  EmbeddingBatcher] = weakref.WeakKeyDictionary()

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
        items = as_texts(texts)
        if not items:
            return []
        if self.config.coalesce_window is not None:
            return await self._batcher().embed(items)
        batches_of = split(items, self.config.max_batch_size, self.config.max_batch_tokens)
        if len(batches_of) == 1:
            return await self._aembed_request(items)
        batches = await asyncio.gather(*(self._aembed_request(b) for b in batches_of))
        return [vector for batch in batches for vector in batch]

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        items = as_texts(texts)
        return [vector for batch in split(items, self.config.max_batch_size,
                                          self.config.max_batch_tokens)
                for vector in self._embed_request(batch)]

    def _batcher(self) -> EmbeddingBatcher:
        # One per loop, made in it: an event loop's futures cannot be shared.
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = EmbeddingBatcher(
                self._aembed_request, max_inputs=self.config.max_batch_size,
                max_tokens=self.config.max_batch_tokens,
                window=self.config.coalesce_window or 0.0)
        return batcher

    async def _aembed_request(self, items: list[str]) -> list[list[float]]:
        with self._call("embeddings", "async") as call:
            return await self._asend(
                call, lambda api: api.embeddings_request(items),
                lambda api, request, response: api.parse_embeddings(request, response, len(items)),
                estimate_tokens(items))

    def _embed_request(self, items: list[str]) -> list[list[float]]:
        with self._call("embeddings", "sync") as call:
            return self._send(
                call, lambda api: api.embeddings_request(items),
                lambda api, request, response: api.parse_embeddings(request, response, len(items)),
                estimate_tokens(items))


class ChatProvider(BaseProvider):
    """Chat completions: text (``achat``/``chat``), text deltas (``astream``/``stream``), or
    the API's own objects, whole (``achat_completion``) or chunk by chunk (``astream_chunks``),
    for callers that need tool calls, usage or finish reasons.

    ``params`` are the request's other fields (``temperature``, ``tools``, ...), sent as
    given. A stream is retried only until its first item: once one has reached the caller,
    a broken stream raises :class:`~rag_llm.errors.StreamInterruptedError` carrying the text.
    """

    kind = "llm"

    async def achat(self, messages: Sequence[Message], **params: Any) -> str:
        with self._call("chat", "async") as call:
            return await self._asend(
                call, lambda api: api.chat_request(messages, params),
                lambda api, request, response: api.parse_chat(request, response),
                _chat_cost(messages, params))

    def chat(self, messages: Sequence[Message], **params: Any) -> str:
        with self._call("chat", "sync") as call:
            return self._send(
                call, lambda api: api.chat_request(messages, params),
                lambda api, request, response: api.parse_chat(request, response),
                _chat_cost(messages, params))

    async def achat_completion(self, messages: Sequence[Message],
                               **params: Any) -> dict[str, Any]:
        """The whole chat completion object the upstream answered."""
        with self._call("chat", "async") as call:
            return await self._asend(
                call, lambda api: api.chat_request(messages, params),
                lambda api, request, response: api.parse_completion(request, response),
                _chat_cost(messages, params))

    def chat_completion(self, messages: Sequence[Message], **params: Any) -> dict[str, Any]:
        """Sync twin of :meth:`achat_completion`."""
        with self._call("chat", "sync") as call:
            return self._send(
                call, lambda api: api.chat_request(messages, params),
                lambda api, request, response: api.parse_completion(request, response),
                _chat_cost(messages, params))

    async def astream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[str]:
        """Yield text deltas as they arrive."""
        async for text in self._astream(messages, params, _text_parser):
            yield text

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[str]:
        """Sync twin of :meth:`astream` (the read timeout bounds each wait for a token)."""
        yield from self._stream(messages, params, _text_parser)

    async def astream_chunks(self, messages: Sequence[Message],
                             **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Yield each ``chat.completion.chunk`` object as it arrives, usage-only ones too
        (ask for those with ``stream_options={"include_usage": True}``)."""
        async for chunk in self._astream(messages, params, _chunk_parser):
            yield chunk

    def stream_chunks(self, messages: Sequence[Message],
                      **params: Any) -> Iterator[dict[str, Any]]:
        """Sync twin of :meth:`astream_chunks`."""
        yield from self._stream(messages, params, _chunk_parser)

    async def _astream(self, messages: Sequence[Message], params: Mapping[str, Any],
                       parser: Callable[[APIAdapter, Request], StreamParser[T]],
                       ) -> AsyncIterator[T]:
        with self._call("chat_stream", "async") as call, self._tracked():
            async for item in async_sending.stream(
                    self.router, call, lambda api: api.chat_request(messages, params, stream=True),
                    parser, _chat_cost(messages, params), self.config.timeouts):
                yield item

    def _stream(self, messages: Sequence[Message], params: Mapping[str, Any],
                parser: Callable[[APIAdapter, Request], StreamParser[T]]) -> Iterator[T]:
        with self._call("chat_stream", "sync") as call, self._tracked():
            yield from sync_sending.stream(
                self.router, call, lambda api: api.chat_request(messages, params, stream=True),
                parser, _chat_cost(messages, params), self.config.timeouts)


def _text_parser(api: APIAdapter, request: Request) -> StreamParser[str]:
    return api.stream_parser(request)


def _chunk_parser(api: APIAdapter, request: Request) -> StreamParser[dict[str, Any]]:
    return api.chunk_parser(request)


def _chat_cost(messages: Sequence[Message], params: Mapping[str, Any]) -> float:
    """Rate-limit tokens of a chat call: its prompt text plus the completion it allows."""
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    return estimate_tokens(texts, limit if isinstance(limit, int) else 0)
