"""rag-llm under the openai SDK: httpx clients whose requests go through a rag-llm provider.

>>> from openai import OpenAI
>>> from rag_llm.integrations.openai import http_client
>>> sdk = OpenAI(api_key="unused", http_client=http_client({  # doctest: +SKIP
...     "type": "openai", "base_url": "http://127.0.0.1:8000/v1", "api_key": "sk-..."}))

Each request the SDK builds is relayed by the provider's router: to one of its
``endpoints`` (the SDK's host is not used), with its key (the SDK's is not sent), retried,
rate limited, pooled and measured as rag-llm's own calls are; the body passes unchanged
and a stream (``"stream": true``) is relayed line by line as it arrives.

The SDK must not retry again what rag-llm already retried: an error answer reaches it as
the upstream's last response with ``x-should-retry: false``, and a failure that brought no
answer as ``openai.APIConnectionError`` (``APITimeoutError`` for timeouts), which the SDK
raises without retrying. :func:`client` and :func:`async_client` build the SDK client
with ``max_retries=0`` as well, for SDK versions that would retry those anyway.

Needs ``rag-llm[openai]``; imported only when this module is.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httpx
import openai

from rag_llm.calls.relay import Relayed, RelayRequest
from rag_llm.config import ProviderConfig
from rag_llm.errors import ConfigError, RagLLMError, RequestTimeoutError
from rag_llm.observability.events import REDACTED
from rag_llm.providers import API_TYPES, LOCAL_TYPES, BaseProvider
from rag_llm.validation import redact_url

__all__ = [
    "AsyncHttpClient",
    "AsyncRelayTransport",
    "HttpClient",
    "RelayTransport",
    "async_client",
    "async_http_client",
    "client",
    "http_client",
]

# The SDK insists on a key; the provider sends its own, so this one goes nowhere.
_PLACEHOLDER_KEY: Final = "rag-llm-sends-its-own-key"
# The model field a relay's config may leave out: each request names its own.
_ANY_MODEL: Final = "set-by-each-request"
# Response headers that describe the upstream's connection and encoding, not this
# response: the transport has already decoded the body, and httpx frames it anew.
_NOT_RELAYED: Final = frozenset({
    "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive",
})
# The last event of a streamed chat completion.
_DONE: Final = "data: [DONE]"
# What clients of this module set on the SDK client themselves.
_SET_HERE: Final = ("base_url", "api_key", "max_retries", "http_client")


def http_client(config: Mapping[str, Any] | ProviderConfig) -> HttpClient:
    """An ``httpx.Client`` for ``OpenAI(http_client=...)`` that owns a new provider of
    ``config`` (its ``model`` may be left out); ``close()`` closes its pools."""
    return HttpClient(_provider(config))


def async_http_client(config: Mapping[str, Any] | ProviderConfig) -> AsyncHttpClient:
    """An ``httpx.AsyncClient`` for ``AsyncOpenAI(http_client=...)``; ``aclose()`` closes
    the provider's pools. Like a provider, it may be used from several event loops."""
    return AsyncHttpClient(_provider(config))


def client(config: Mapping[str, Any] | ProviderConfig, **options: Any) -> openai.OpenAI:
    """``OpenAI`` on :func:`http_client`, at the provider's ``base_url``, with
    ``max_retries=0``; ``options`` go to ``OpenAI()`` (not ``base_url``, ``api_key``,
    ``max_retries`` or ``http_client``, which this sets)."""
    _refuse_set(options)
    http = http_client(config)
    try:
        return openai.OpenAI(base_url=http.provider.config.base_url, api_key=_PLACEHOLDER_KEY,
                             max_retries=0, http_client=cast(Any, http), **options)
    except BaseException:
        http.close()
        raise


def async_client(config: Mapping[str, Any] | ProviderConfig,
                 **options: Any) -> openai.AsyncOpenAI:
    """:func:`client`'s async twin: ``AsyncOpenAI`` on :func:`async_http_client`."""
    _refuse_set(options)
    provider = _provider(config)
    try:
        return openai.AsyncOpenAI(base_url=provider.config.base_url,
                                  api_key=_PLACEHOLDER_KEY, max_retries=0,
                                  http_client=cast(Any, AsyncHttpClient(provider)), **options)
    except BaseException:
        provider.close()
        raise


class HttpClient(httpx.Client):
    """An httpx client that sends through ``provider`` (its owner: ``close()`` closes it)."""

    def __init__(self, provider: BaseProvider) -> None:
        # trust_env off: a proxy from the environment would route around the transport.
        super().__init__(transport=RelayTransport(provider), trust_env=False)
        self.provider = provider

    def __repr__(self) -> str:
        return f"<HttpClient {self.provider!r}>"


class AsyncHttpClient(httpx.AsyncClient):
    """The async twin of :class:`HttpClient`: ``aclose()`` closes ``provider``."""

    def __init__(self, provider: BaseProvider) -> None:
        super().__init__(transport=AsyncRelayTransport(provider), trust_env=False)
        self.provider = provider

    def __repr__(self) -> str:
        return f"<AsyncHttpClient {self.provider!r}>"


class RelayTransport(httpx.BaseTransport):
    """Relays each request through ``provider``'s sync calls."""

    def __init__(self, provider: BaseProvider) -> None:
        self._relay = _Relay(provider)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        relay = self._relay
        relayed_request = relay.request_of(request, request.read())
        try:
            relayed = relay.provider.relay(relayed_request)
        except RagLLMError as exc:
            raise _sdk_error(exc, request) from exc
        lines = relayed.lines
        return relay.response_of(relayed, request,
                                 None if lines is None else _Lines(lines, request))

    def close(self) -> None:
        self._relay.provider.close()

    def __repr__(self) -> str:
        return f"<RelayTransport {self._relay.provider!r}>"


class AsyncRelayTransport(httpx.AsyncBaseTransport):
    """Relays each request through ``provider``'s async calls, on any event loop."""

    def __init__(self, provider: BaseProvider) -> None:
        self._relay = _Relay(provider)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        relay = self._relay
        relayed_request = relay.request_of(request, await request.aread())
        try:
            relayed = await relay.provider.arelay(relayed_request)
        except RagLLMError as exc:
            raise _sdk_error(exc, request) from exc
        lines = relayed.lines
        return relay.response_of(relayed, request,
                                 None if lines is None else _AsyncLines(lines, request))

    async def aclose(self) -> None:
        await self._relay.provider.aclose()

    def __repr__(self) -> str:
        return f"<AsyncRelayTransport {self._relay.provider!r}>"


class _Relay:
    """What both transports share: the provider, and how the SDK's requests and the
    upstream's answers map onto each other."""

    __slots__ = ("_prefix", "_secrets", "provider")

    def __init__(self, provider: BaseProvider) -> None:
        self.provider = provider
        # The SDK's path below this is the operation (``/v1/embeddings`` -> ``embeddings``).
        self._prefix = urlsplit(provider.config.base_url).path.rstrip("/")
        self._secrets = [e.api_key.get_secret_value().encode()
                         for e in provider.config.endpoints if e.api_key is not None]

    def request_of(self, request: httpx.Request, content: bytes) -> RelayRequest:
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        prefix = self._prefix
        if path != prefix and not path.startswith(prefix + "/"):
            raise ConfigError(
                "base_url", f"{request.url.scheme}://{request.url.netloc.decode()}{path}",
                f"is not under the provider's base_url path {prefix!r}: give the SDK "
                f"base_url={redact_url(self.provider.config.base_url)!r}, or build it with "
                "rag_llm.integrations.openai.client(config)")
        return RelayRequest.of(request.method, path[len(prefix):], query, request.headers,
                               content or None)

    def response_of(self, relayed: Relayed[Any], request: httpx.Request,
                    stream: httpx.SyncByteStream | httpx.AsyncByteStream | None,
                    ) -> httpx.Response:
        answer = relayed.response
        headers = [(k.lower(), v) for k, v in answer.headers.items()
                   if k.lower() not in _NOT_RELAYED]
        if stream is not None:
            return httpx.Response(answer.status, headers=headers, stream=stream,
                                  request=request)
        content = answer.content
        if answer.status >= 400:
            # rag-llm retried this already: the SDK is not to retry it again.
            headers.append(("x-should-retry", "false"))
            for secret in self._secrets:
                content = content.replace(secret, REDACTED.encode())
        return httpx.Response(answer.status, headers=headers, content=content,
                              request=request)


class _Lines(httpx.SyncByteStream):
    """A relayed stream's body for httpx, each line as it arrives."""

    def __init__(self, lines: Generator[str, None, None], request: httpx.Request) -> None:
        self._lines = lines
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        lines = self._lines
        try:
            for line in lines:
                if line == _DONE:
                    # The SDK stops reading here and closes the body: read what is left of
                    # it first (a blank line), so that the connection goes back to the pool.
                    yield _encoded([line, *lines])
                    return
                yield _encoded([line])
        except RagLLMError as exc:
            raise _read_error(exc, self._request) from exc

    def close(self) -> None:
        self._lines.close()


class _AsyncLines(httpx.AsyncByteStream):
    def __init__(self, lines: AsyncGenerator[str, None], request: httpx.Request) -> None:
        self._lines = lines
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        lines = self._lines
        try:
            async for line in lines:
                if line == _DONE:
                    yield _encoded([line, *[rest async for rest in lines]])
                    return
                yield _encoded([line])
        except RagLLMError as exc:
            raise _read_error(exc, self._request) from exc

    async def aclose(self) -> None:
        await self._lines.aclose()


def _encoded(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


def _sdk_error(exc: RagLLMError, request: httpx.Request) -> openai.APIConnectionError:
    """The SDK's error for a call that brought no answer; the SDK raises it as it is,
    without retrying (rag-llm's message, which names no secret, says why)."""
    sdk_request = cast(Any, request)
    if isinstance(exc, RequestTimeoutError):
        return openai.APITimeoutError(request=sdk_request)
    return openai.APIConnectionError(message=str(exc), request=sdk_request)


def _read_error(exc: RagLLMError, request: httpx.Request) -> httpx.TransportError:
    """What httpx raises for a body broken off: a stream broke after it had begun."""
    if isinstance(exc, RequestTimeoutError):
        return httpx.ReadTimeout(str(exc), request=request)
    return httpx.RemoteProtocolError(str(exc), request=request)


def _provider(config: Mapping[str, Any] | ProviderConfig) -> BaseProvider:
    if isinstance(config, ProviderConfig):
        settings = config
    elif isinstance(config, Mapping):
        kind = config.get("type")
        if isinstance(kind, str) and kind in LOCAL_TYPES:
            raise ConfigError("type", kind, "runs in-process; the openai SDK needs an HTTP "
                              f"API: one of {', '.join(sorted(API_TYPES))}")
        if not isinstance(kind, str) or kind not in API_TYPES:
            raise ConfigError("type", kind, f"must be one of {', '.join(sorted(API_TYPES))}")
        settings = ProviderConfig.from_mapping({"model": _ANY_MODEL, **config},
                                               default_base_url=API_TYPES[kind][1])
    else:
        raise ConfigError("config", type(config).__name__,
                          "must be a mapping or a ProviderConfig")
    if settings.type not in API_TYPES:
        raise ConfigError("type", settings.type, f"must be one of {', '.join(sorted(API_TYPES))}")
    return BaseProvider(settings, API_TYPES[settings.type][0])


def _refuse_set(options: Mapping[str, Any]) -> None:
    taken = sorted(set(options) & set(_SET_HERE))
    if taken:
        raise TypeError(f"{', '.join(taken)}: set by rag_llm.integrations.openai from the "
                        "config; pass the others only")
