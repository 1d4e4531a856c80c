"""The clients measured: rag-llm's providers (one per transport, async and sync) and their peers.

Every adapter sends :data:`~benchmarks.payload.REQUEST_BODY` to ``/embeddings`` and returns the
vectors as ``list[list[float]]``, so that each does the same work. Libraries are imported in
``open()``, inside the worker subprocess that runs that one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from benchmarks.payload import (
    API_KEY,
    MODEL,
    REQUEST_BODY,
    REQUEST_HEADERS,
    TEXT,
    parse_vectors,
)

__all__ = [
    "AsyncClient",
    "ClientSpec",
    "SyncClient",
    "Target",
    "client_specs",
    "rag_llm_transports",
]

Vectors = list[list[float]]


@dataclass(frozen=True, slots=True)
class Target:
    """The upstream one cell talks to: ``base_url`` ends in ``/v1``; ``ca_path`` is its CA;
    ``state_url`` the runner's redis-server, for the clients that keep limits in Redis."""

    base_url: str
    ca_path: str
    state_url: str | None = None


class AsyncClient(Protocol):
    async def open(self) -> None: ...

    async def embed(self) -> Vectors: ...

    async def close(self) -> None: ...


class SyncClient(Protocol):
    def open(self) -> None: ...

    def embed(self) -> Vectors: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One measured client: how to build it and which scenarios it takes part in."""

    name: str
    mode: Literal["async", "sync"]
    description: str
    # Distribution whose version the report shows, and the module the import scenario times.
    distribution: str
    module: str
    factory: Callable[[Target, int], Any] = field(repr=False)
    scenarios: frozenset[str] = frozenset()
    rag_llm: bool = False
    # Further modules the client needs (h2 for HTTP/2): missing means "not measured".
    requires: tuple[str, ...] = ()
    # Its limits live in Redis: the runner starts a redis-server for it.
    state: bool = False


@functools.cache
def _context(ca_path: str) -> ssl.SSLContext:
    """One verifying context per process, trusting the run's CA (what a pooled client holds)."""
    return ssl.create_default_context(cafile=ca_path)


@functools.cache
def _pem(ca_path: str) -> bytes:
    """The run's CA as PEM bytes, read once, before any request is timed."""
    with open(ca_path, "rb") as file:
        return file.read()


def _fresh_default_context(ca_path: str) -> ssl.SSLContext:
    """What ``httpx.AsyncClient()`` builds on every construction: the full CA bundle, plus ours."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=ca_path)
    return context


def _ok(status: int, content: bytes) -> Vectors:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
    return parse_vectors(content)


# -- rag-llm -----------------------------------------------------------------------


def _provider_config(target: Target, transport: str, http2: bool = False) -> dict[str, Any]:
    return {
        "type": "openai_compatible",
        "base_url": target.base_url,
        "model": MODEL,
        "api_key": API_KEY,
        "verify": target.ca_path,
        "transport": transport,
        "http2": http2,
    }


# Shared limits that never bind: what Redis state costs when it only counts.
_UNBINDING: Final = {"global_max_in_flight": 100_000, "requests_per_minute": 1e9}


def _state_config(target: Target) -> dict[str, Any]:
    if target.state_url is None:
        raise RuntimeError("no redis-server for this client")
    return {"state": {"url": target.state_url, "prefix": f"bench-{os.getpid()}"},
            **_UNBINDING}


class _RagLLMAsync:
    def __init__(self, target: Target, transport: str, http2: bool = False,
                 state: bool = False) -> None:
        self._config = _provider_config(target, transport, http2)
        if state:
            self._config.update(_state_config(target))
        self._provider: Any = None

    async def open(self) -> None:
        from rag_llm import create_provider

        self._provider = create_provider("embedding", self._config)

    async def embed(self) -> Vectors:
        vectors: Vectors = await self._provider.aembed([TEXT])
        return vectors

    async def close(self) -> None:
        await self._provider.aclose()


class _RagLLMSync:
    def __init__(self, target: Target, transport: str) -> None:
        self._config = _provider_config(target, transport)
        self._provider: Any = None

    def open(self) -> None:
        from rag_llm import create_provider

        self._provider = create_provider("embedding", self._config)

    def embed(self) -> Vectors:
        vectors: Vectors = self._provider.embed([TEXT])
        return vectors

    def close(self) -> None:
        self._provider.close()


# -- httpx and httpx2 ----------------------------------------------------------------


class _HttpxAsync:
    """``AsyncClient`` of ``module`` (httpx or httpx2), reused, or new per request; ``http2``
    offers h2 by ALPN (needs the h2 package)."""

    def __init__(self, target: Target, module: str, *, per_request: bool = False,
                 http2: bool = False) -> None:
        self._target = target
        self._url = f"{target.base_url}/embeddings"
        self._module_name = module
        self._per_request = per_request
        self._http2 = http2
        self._module: Any = None
        self._client: Any = None

    async def open(self) -> None:
        self._module = importlib.import_module(self._module_name)
        if not self._per_request:
            # httpcore sets ALPN on the context it is given: fine, one client per process.
            self._client = self._module.AsyncClient(verify=_context(self._target.ca_path),
                                                    http2=self._http2)

    async def embed(self) -> Vectors:
        if self._per_request:
            verify = _fresh_default_context(self._target.ca_path)
            async with self._module.AsyncClient(verify=verify) as client:
                response = await client.post(self._url, content=REQUEST_BODY,
                                             headers=REQUEST_HEADERS)
                return _ok(response.status_code, response.content)
        response = await self._client.post(self._url, content=REQUEST_BODY,
                                           headers=REQUEST_HEADERS)
        return _ok(response.status_code, response.content)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _HttpxSync:
    def __init__(self, target: Target, module: str) -> None:
        self._target = target
        self._url = f"{target.base_url}/embeddings"
        self._module_name = module
        self._client: Any = None

    def open(self) -> None:
        module = importlib.import_module(self._module_name)
        self._client = module.Client(verify=_context(self._target.ca_path))

    def embed(self) -> Vectors:
        response = self._client.post(self._url, content=REQUEST_BODY, headers=REQUEST_HEADERS)
        return _ok(response.status_code, response.content)

    def close(self) -> None:
        self._client.close()


# -- aiohttp, urllib3 ------------------------------------------------------------------


class _Aiohttp:
    """A pooled ``ClientSession`` with aiohttp's default connector limits (100)."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._url = f"{target.base_url}/embeddings"
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=_context(self._target.ca_path))
        self._session = aiohttp.ClientSession(connector=connector)

    async def embed(self) -> Vectors:
        async with self._session.post(self._url, data=REQUEST_BODY,
                                      headers=REQUEST_HEADERS) as response:
            return _ok(response.status, await response.read())

    async def close(self) -> None:
        await self._session.close()


class _Pyreqwest:
    """A pooled pyreqwest ``Client`` (Rust reqwest, hyper, rustls) trusting the run's CA;
    ``http2`` offers h2 by ALPN."""

    def __init__(self, target: Target, http2: bool = False) -> None:
        self._target = target
        self._url = f"{target.base_url}/embeddings"
        self._http2 = http2
        self._client: Any = None

    async def open(self) -> None:
        from pyreqwest.client import ClientBuilder

        self._client = (ClientBuilder().add_root_certificate_pem(_pem(self._target.ca_path))
                        .no_proxy().http2(self._http2).build())

    async def embed(self) -> Vectors:
        response = await (self._client.post(self._url).headers(REQUEST_HEADERS)
                          .body_bytes(REQUEST_BODY).build().send())
        return _ok(response.status, bytes(await response.bytes()))

    async def close(self) -> None:
        await self._client.close()


class _Urllib3:
    """``PoolManager(maxsize=concurrency)``: its default of 1 would discard pooled connections."""

    def __init__(self, target: Target, concurrency: int) -> None:
        self._target = target
        self._url = f"{target.base_url}/embeddings"
        self._maxsize = max(concurrency, 1)
        self._pool: Any = None

    def open(self) -> None:
        import urllib3

        self._pool = urllib3.PoolManager(maxsize=self._maxsize,
                                         ssl_context=_context(self._target.ca_path))

    def embed(self) -> Vectors:
        response = self._pool.request("POST", self._url, body=REQUEST_BODY,
                                      headers=REQUEST_HEADERS)
        return _ok(response.status, response.data)

    def close(self) -> None:
        self._pool.clear()


# -- the openai SDK and LiteLLM ---------------------------------------------------------


class _OpenAI:
    """``AsyncOpenAI`` with the SDK's own default httpx client, or its aiohttp option."""

    def __init__(self, target: Target, *, aiohttp: bool = False) -> None:
        self._target = target
        self._aiohttp = aiohttp
        self._client: Any = None

    async def open(self) -> None:
        import openai

        make = openai.DefaultAioHttpClient if self._aiohttp else openai.DefaultAsyncHttpxClient
        self._client = openai.AsyncOpenAI(base_url=self._target.base_url, api_key=API_KEY,
                                          http_client=make(verify=_context(self._target.ca_path)))

    async def embed(self) -> Vectors:
        # encoding_format="float": the same JSON floats as every other client (the SDK asks
        # for base64 by default, which a real server would answer with a smaller body).
        response = await self._client.embeddings.create(model=MODEL, input=[TEXT],
                                                         encoding_format="float")
        return [item.embedding for item in response.data]

    async def close(self) -> None:
        await self._client.close()


class _LiteLLM:
    """``litellm.aembedding``, as its documentation shows it, with its own client cache.

    The cache lives as long as the worker, so later cells reuse the connections of earlier
    ones: litellm is measured warm, as a long-running service would run it.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._litellm: Any = None

    async def open(self) -> None:
        # Before the import: no network fetch of the model cost map, quiet logs.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        import litellm

        litellm.ssl_verify = self._target.ca_path
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        self._litellm = litellm

    async def embed(self) -> Vectors:
        response = await self._litellm.aembedding(
            model=f"openai/{MODEL}", input=[TEXT], api_base=self._target.base_url,
            api_key=API_KEY, encoding_format="float",
        )
        return [item["embedding"] if isinstance(item, Mapping) else item.embedding
                for item in response.data]

    async def close(self) -> None:
        # Nothing to close: litellm caches its clients per process, and after
        # close_litellm_async_clients() its cache hands out the closed clients ("Cannot send a
        # request, as the client has been closed"). A litellm user never closes; neither do we.
        return None


# -- the floor: raw asyncio streams -----------------------------------------------------------


class _RawFloor:
    """Keep-alive HTTP/1.1 over asyncio streams with a prebuilt request: the Python floor."""

    def __init__(self, target: Target) -> None:
        parts = urlsplit(f"{target.base_url}/embeddings")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = _context(target.ca_path) if parts.scheme == "https" else None
        headers = "".join(f"{k}: {v}\r\n" for k, v in REQUEST_HEADERS.items())
        self._request = (
            f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n{headers}"
            f"content-length: {len(REQUEST_BODY)}\r\n\r\n"
        ).encode() + REQUEST_BODY
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        return None

    async def embed(self) -> Vectors:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
            self._all.append(writer)
        writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        content = await reader.readexactly(length)
        self._idle.append((reader, writer))
        return _ok(status, content)

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        for writer in self._all:
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=2.0)


# -- the registry -------------------------------------------------------------------------------

_POOLED_ASYNC: Final = frozenset({"latency", "throughput", "memory"})
_SYNC: Final = frozenset({"sync", "memory"})
# HTTP/2 against HTTP/1.1 keep-alive: the h2 clients, the same libraries over HTTP/1.1
# (ragllm-httpx2, httpx2, ragllm-pyreqwest, pyreqwest: only the protocol differs) and the
# async default (ragllm-auto).
_HTTP2: Final = "http2"
_HTTP2_PEERS: Final = frozenset({"ragllm-auto", "ragllm-httpx2", "httpx2", "ragllm-pyreqwest"})


# Transports on an optional package: without it their clients are "not measured".
_TRANSPORT_REQUIRES: Final = {"pyreqwest": ("pyreqwest",)}


def rag_llm_transports() -> tuple[str, ...]:
    """Every value the ``transport`` setting accepts, read from rag-llm itself."""
    from rag_llm.config import TRANSPORTS

    return tuple(TRANSPORTS)


def client_specs() -> dict[str, ClientSpec]:
    """Every client by name, rag-llm's first (one async and one sync per transport)."""
    specs: list[ClientSpec] = []
    for transport in rag_llm_transports():
        name = f"ragllm-{transport}"
        specs.append(ClientSpec(
            name, "async", f"rag-llm aembed(), transport={transport}",
            "rag-llm", "rag_llm", functools.partial(_rag_async, transport=transport),
            _POOLED_ASYNC | ({_HTTP2} if name in _HTTP2_PEERS else set()), rag_llm=True,
            requires=_TRANSPORT_REQUIRES.get(transport, ()),
        ))
        specs.append(ClientSpec(
            f"ragllm-{transport}-sync", "sync", f"rag-llm embed() in threads, transport="
            f"{transport}", "rag-llm", "rag_llm",
            functools.partial(_rag_sync, transport=transport), _SYNC, rag_llm=True,
            requires=_TRANSPORT_REQUIRES.get(transport, ()),
        ))
    specs += [
        ClientSpec("ragllm-auto-redis", "async", "rag-llm aembed(), transport=auto, limits "
                   "in Redis (global_max_in_flight and requests_per_minute, never binding)",
                   "rag-llm", "rag_llm", functools.partial(_rag_async, transport="auto",
                                                           state=True),
                   frozenset({"throughput"}), rag_llm=True, requires=("redis",), state=True),
        ClientSpec("ragllm-h2", "async", "rag-llm aembed(), http2=true (transport auto: "
                   "httpx2 with HTTP/2)", "rag-llm", "rag_llm",
                   functools.partial(_rag_async, transport="auto", http2=True),
                   frozenset({_HTTP2}), rag_llm=True, requires=("h2",)),
        ClientSpec("ragllm-pyreqwest-h2", "async", "rag-llm aembed(), http2=true, "
                   "transport=pyreqwest (hyper's h2)", "rag-llm", "rag_llm",
                   functools.partial(_rag_async, transport="pyreqwest", http2=True),
                   frozenset({_HTTP2}), rag_llm=True, requires=("pyreqwest",)),
        ClientSpec("floor", "async", "raw asyncio streams, prebuilt request (reference floor)",
                   "python", "asyncio", lambda t, c: _RawFloor(t),
                   frozenset({"latency", "proxy"})),
        ClientSpec("aiohttp", "async", "aiohttp ClientSession, reused", "aiohttp", "aiohttp",
                   lambda t, c: _Aiohttp(t), _POOLED_ASYNC | {"proxy"}),
        ClientSpec("pyreqwest", "async", "pyreqwest Client, reused", "pyreqwest", "pyreqwest",
                   lambda t, c: _Pyreqwest(t), _POOLED_ASYNC | {_HTTP2}),
        ClientSpec("pyreqwest-h2", "async", "pyreqwest Client, http2(True), reused",
                   "pyreqwest", "pyreqwest", lambda t, c: _Pyreqwest(t, http2=True),
                   frozenset({_HTTP2})),
        ClientSpec("httpx", "async", "httpx AsyncClient, reused", "httpx", "httpx",
                   lambda t, c: _HttpxAsync(t, "httpx"), _POOLED_ASYNC),
        ClientSpec("httpx-new", "async", "httpx AsyncClient() new per request (the 'before')",
                   "httpx", "httpx",
                   lambda t, c: _HttpxAsync(t, "httpx", per_request=True),
                   frozenset({"latency"})),
        ClientSpec("httpx2", "async", "httpx2 AsyncClient, reused", "httpx2", "httpx2",
                   lambda t, c: _HttpxAsync(t, "httpx2"), _POOLED_ASYNC | {_HTTP2}),
        ClientSpec("httpx2-h2", "async", "httpx2 AsyncClient(http2=True), reused", "httpx2",
                   "httpx2", lambda t, c: _HttpxAsync(t, "httpx2", http2=True),
                   frozenset({_HTTP2}), requires=("h2",)),
        ClientSpec("openai", "async", "openai AsyncOpenAI, SDK default http client", "openai",
                   "openai", lambda t, c: _OpenAI(t), _POOLED_ASYNC),
        ClientSpec("openai-aiohttp", "async", "openai AsyncOpenAI, DefaultAioHttpClient",
                   "openai", "openai", lambda t, c: _OpenAI(t, aiohttp=True), _POOLED_ASYNC),
        ClientSpec("litellm", "async", "litellm.aembedding()", "litellm", "litellm",
                   lambda t, c: _LiteLLM(t), _POOLED_ASYNC),
        ClientSpec("httpx-sync", "sync", "httpx Client in threads, reused", "httpx", "httpx",
                   lambda t, c: _HttpxSync(t, "httpx"), _SYNC),
        ClientSpec("httpx2-sync", "sync", "httpx2 Client in threads, reused", "httpx2",
                   "httpx2", lambda t, c: _HttpxSync(t, "httpx2"), _SYNC),
        ClientSpec("urllib3-sync", "sync", "urllib3 PoolManager(maxsize=c) in threads",
                   "urllib3", "urllib3", _Urllib3, _SYNC),
    ]
    return {spec.name: spec for spec in specs}


def _rag_async(target: Target, concurrency: int, *, transport: str,
               http2: bool = False, state: bool = False) -> _RagLLMAsync:
    return _RagLLMAsync(target, transport, http2, state)


def _rag_sync(target: Target, concurrency: int, *, transport: str) -> _RagLLMSync:
    return _RagLLMSync(target, transport)
