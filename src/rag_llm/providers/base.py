"""Providers: a pooled client plus an API adapter, with sync and async twins of each call.

The adapter builds every request and parses every response; the provider only sends,
through its :class:`~rag_llm.pool.ClientPool`, so sync and async share one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, Self, TypeVar

from rag_llm.adapters import AdapterFactory, APIAdapter, Message
from rag_llm.calls.batching import EmbeddingBatcher, split, text_tokens
from rag_llm.config import ProviderConfig
from rag_llm.errors import (
    ConnectionLostError,
    MalformedResponseError,
    ProviderClosedError,
    RagLLMError,
    ReadTimeoutError,
    StreamInterruptedError,
    TransportError,
    UpstreamError,
)
from rag_llm.observability.events import get_logger
from rag_llm.observability.stats import ClientStats
from rag_llm.pool import TRAFFIC, ClientPool, PoolSnapshot, merge_pools
from rag_llm.transport import Request, Response
from rag_llm.validation import redact_url

if TYPE_CHECKING:
    from rag_llm.calls.attempts import Attempt
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
L = TypeVar("L", AsyncIterator[str], Iterator[str])


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

    def _call(self, operation: str, client: str) -> _Call:
        return _Call(self.pool.stats(client), operation)

    async def _asend(self, call: _Call, build: Callable[[APIAdapter], Request],
                     parse: Callable[[APIAdapter, Request, Response], T], cost: float) -> T:
        with self._tracked():
            async for attempt in self.router.attempts(cost):
                async with attempt:
                    upstream = attempt.upstream
                    request = build(upstream.api)
                    if upstream.admission is None:
                        response = await (await upstream.pool.async_transport()).send(request)
                        call.status = response.status
                    else:
                        async with upstream.admission.admitted(request) as admission:
                            transport = await upstream.pool.async_transport()
                            response = await transport.send(request)
                            call.status = admission.status = response.status
                    return parse(upstream.api, request, response)
        raise AssertionError("attempts end by return or raise")

    def _send(self, call: _Call, build: Callable[[APIAdapter], Request],
              parse: Callable[[APIAdapter, Request, Response], T], cost: float) -> T:
        with self._tracked():
            for attempt in self.router.attempts(cost):
                with attempt:
                    upstream = attempt.upstream
                    transport = upstream.pool.sync_transport()  # before the deadline's cap
                    request = attempt.capped(build(upstream.api))
                    if upstream.admission is None:
                        response = transport.send(request)
                        call.status = response.status
                    else:
                        with upstream.admission.admitted_sync(request) as admission:
                            response = transport.send(request)
                            call.status = admission.status = response.status
                    return parse(upstream.api, request, response)
        raise AssertionError("attempts end by return or raise")

    def _tracked(self) -> _InFlight:
        """Count one call in flight while it runs; refused once shutdown has begun."""
        return _InFlight(self)

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
    """Chat completions, whole (``achat``/``chat``) or streamed (``astream``/``stream``).

    A stream is retried only until its first token: once text has reached the caller, a
    broken stream raises :class:`~rag_llm.errors.StreamInterruptedError` carrying it.
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

    async def astream(self, messages: Sequence[Message], **params: Any) -> AsyncIterator[str]:
        """Yield text deltas as they arrive."""
        timeouts = self.config.timeouts
        with self._call("chat_stream", "async") as call, self._tracked():
            async with contextlib.AsyncExitStack() as held:
                async for attempt in self.router.attempts(_chat_cost(messages, params)):
                    async with attempt:
                        stream = await self._aopen_stream(attempt, messages, params, call, held)
                        break
                received: list[str] = []
                text = stream.first
                while True:
                    if text is not None:
                        received.append(text)
                        call.token()
                        yield text
                    idle = asyncio.timeout(timeouts.stream_idle)
                    try:
                        async with idle:
                            line = await anext(stream.lines)
                    except StopAsyncIteration:
                        break
                    except TransportError as exc:  # read timeouts included
                        raise stream.interrupted(received, exc.detail) from exc
                    except TimeoutError:
                        if not idle.expired():
                            raise
                        raise stream.interrupted(
                            received, f"no token for stream_idle_timeout="
                                      f"{timeouts.stream_idle:g}s") from None
                    text = stream.parser.feed(line)
                if not stream.parser.done:
                    raise stream.interrupted(received, "the stream ended before [DONE]")

    async def _aopen_stream(self, attempt: Attempt, messages: Sequence[Message],
                            params: dict[str, Any], call: _Call,
                            held: contextlib.AsyncExitStack) -> _OpenStream[AsyncIterator[str]]:
        """Send, then read up to the first token within ``first_token_timeout``.

        Up to there a failure is the attempt's, and may be retried; the open response then
        moves to ``held``, which the stream's reader owns.
        """
        api = attempt.upstream.api
        request = api.chat_request(messages, params, stream=True)
        limit = self.config.timeouts.first_token
        first_token = asyncio.timeout(limit)
        async with contextlib.AsyncExitStack() as stack:
            admission = None if attempt.upstream.admission is None else \
                await stack.enter_async_context(attempt.upstream.admission.admitted(request))
            try:
                async with first_token:
                    transport = await attempt.upstream.pool.async_transport()
                    response = await stack.enter_async_context(transport.stream(request))
                    call.status = response.status
                    if admission is not None:
                        admission.status = response.status
                    if response.status >= 400:
                        raise api.error(request, response.status, response.headers,
                                        await response.aread())
                    stream = _OpenStream(api, request, response.aiter_lines())
                    async for line in stream.lines:
                        stream.first = stream.parser.feed(line)
                        if stream.first is not None or stream.parser.done:
                            break
            except TimeoutError:
                if not first_token.expired():
                    raise
                raise ReadTimeoutError(f"no token within first_token_timeout={limit:g}s",
                                       provider=self.name, endpoint=request.endpoint) from None
            stream.check_started()
            held.push_async_exit(stack.pop_all())
        return stream

    def stream(self, messages: Sequence[Message], **params: Any) -> Iterator[str]:
        """Sync twin of :meth:`astream` (the read timeout bounds each wait for a token)."""
        with self._call("chat_stream", "sync") as call, self._tracked(), \
                contextlib.ExitStack() as held:
            for attempt in self.router.attempts(_chat_cost(messages, params)):
                with attempt:
                    stream = self._open_stream(attempt, messages, params, call, held)
                    break
            received: list[str] = []
            text = stream.first
            while True:
                if text is not None:
                    received.append(text)
                    call.token()
                    yield text
                try:
                    line = next(stream.lines)
                except StopIteration:
                    break
                except TransportError as exc:
                    raise stream.interrupted(received, exc.detail) from exc
                text = stream.parser.feed(line)
            if not stream.parser.done:
                raise stream.interrupted(received, "the stream ended before [DONE]")

    def _open_stream(self, attempt: Attempt, messages: Sequence[Message],
                     params: dict[str, Any], call: _Call,
                     held: contextlib.ExitStack) -> _OpenStream[Iterator[str]]:
        api = attempt.upstream.api
        transport = attempt.upstream.pool.sync_transport()  # before the deadline's cap
        request = attempt.capped(api.chat_request(messages, params, stream=True))
        with contextlib.ExitStack() as stack:
            admission = None if attempt.upstream.admission is None else \
                stack.enter_context(attempt.upstream.admission.admitted_sync(request))
            response = stack.enter_context(transport.stream(request))
            call.status = response.status
            if admission is not None:
                admission.status = response.status
            if response.status >= 400:
                raise api.error(request, response.status, response.headers, response.read())
            stream = _OpenStream(api, request, response.iter_lines())
            for line in stream.lines:
                stream.first = stream.parser.feed(line)
                if stream.first is not None or stream.parser.done:
                    break
            stream.check_started()
            held.push(stack.pop_all())
        return stream


class _OpenStream(Generic[L]):
    """A stream that has answered: its lines, parser, and the first text (None if none)."""

    __slots__ = ("api", "first", "lines", "parser", "request")

    def __init__(self, api: APIAdapter, request: Request, lines: L) -> None:
        self.api = api
        self.request = request
        self.lines: L = lines
        self.parser = api.stream_parser(request)
        self.first: str | None = None

    def check_started(self) -> None:
        """Fail the attempt (retryable) if the body ended before any text or [DONE]."""
        if self.first is None and not self.parser.done:
            raise ConnectionLostError("the stream ended before its first token",
                                      provider=self.api.provider, endpoint=self.request.endpoint)

    def interrupted(self, received: list[str], why: str) -> StreamInterruptedError:
        return StreamInterruptedError(
            f"stream interrupted after {len(received)} deltas: {why}",
            provider=self.api.provider, endpoint=self.request.endpoint,
            received="".join(received))


def estimate_tokens(texts: Sequence[str], extra: int = 0) -> float:
    """A rate-limit token estimate: about four characters a token, plus ``extra``."""
    return sum(text_tokens(text) for text in texts) + extra


def _chat_cost(messages: Sequence[Message], params: Mapping[str, Any]) -> float:
    """Rate-limit tokens of a chat call: its prompt text plus the completion it allows."""
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    return estimate_tokens(texts, limit if isinstance(limit, int) else 0)
