"""Providers against a real upstream on 127.0.0.1, each call sync and async."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import KEY, assert_rag_error, closed_port, config

from rag_llm import errors
from rag_llm.providers import BaseProvider, ChatProvider, EmbeddingProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer

HELLO = [{"role": "system", "content": "be brief"},
         {"role": "user", "content": "hello there, pooled world"}]


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# One attempt per call: these tests map each upstream failure to its error.
def embedder(server: UpstreamServer, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding", config(base_url=server.base_url, retry=False,
                                               **overrides))


def chatter(server: UpstreamServer, **overrides: Any) -> ChatProvider:
    return create_provider("llm", config(base_url=server.base_url, model="gpt-4o-mini",
                                         retry=False, **overrides))


async def embed(provider: EmbeddingProvider, mode: str, texts: Any) -> list[list[float]]:
    return provider.embed(texts) if mode == "sync" else await provider.aembed(texts)


async def chat(provider: ChatProvider, mode: str, **params: Any) -> str:
    if mode == "sync":
        return provider.chat(HELLO, **params)
    return await provider.achat(HELLO, **params)


async def stream(provider: ChatProvider, mode: str, **params: Any) -> list[str]:
    if mode == "sync":
        return list(provider.stream(HELLO, **params))
    return [delta async for delta in provider.astream(HELLO, **params)]


async def call(provider: BaseProvider, mode: str) -> object:
    """One request of whichever kind ``provider`` is."""
    if isinstance(provider, EmbeddingProvider):
        return await embed(provider, mode, ["x"])
    assert isinstance(provider, ChatProvider)
    return await chat(provider, mode)


async def test_embed_returns_server_vectors_in_order(server: UpstreamServer, mode: str) -> None:
    texts = ["alpha", "beta", "gamma δ", "alpha"]
    async with embedder(server) as provider:
        vectors = await embed(provider, mode, texts)
    assert vectors == [server.expected_embedding(text) for text in texts]
    assert all(type(v) is list and all(type(x) is float for x in v) for v in vectors)
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/embeddings")
    assert request.json == {"model": "text-embedding-3-small", "input": texts}


async def test_embed_empty_list_sends_no_request(server: UpstreamServer, mode: str) -> None:
    async with embedder(server) as provider:
        assert await embed(provider, mode, []) == []
    assert server.requests == []
    assert server.connections_accepted == 0


async def test_embed_str_is_one_text(server: UpstreamServer, mode: str) -> None:
    async with embedder(server) as provider:
        assert await embed(provider, mode, "just one") == [server.expected_embedding("just one")]
    assert server.requests[0].json["input"] == ["just one"]


@pytest.mark.parametrize("texts", [["ok", 1], [None], ["ok", b"bytes"]])
async def test_embed_non_str_item_raises_type_error(
    server: UpstreamServer, mode: str, texts: list[Any]
) -> None:
    async with embedder(server) as provider:
        with pytest.raises(TypeError, match=r"texts\[\d\] must be str"):
            await embed(provider, mode, texts)
    assert server.requests == []


async def test_embed_sends_dimensions_when_configured(server: UpstreamServer, mode: str) -> None:
    async with embedder(server, dimensions=4) as provider:
        vectors = await embed(provider, mode, ["a", "b"])
    assert vectors == [server.expected_embedding(t, dim=4) for t in ("a", "b")]
    assert server.requests[0].json["dimensions"] == 4
    async with embedder(server) as provider:
        await embed(provider, mode, ["a"])
    assert "dimensions" not in server.requests[1].json


async def test_chat_returns_content_and_passes_params(server: UpstreamServer, mode: str) -> None:
    async with chatter(server) as provider:
        content = await chat(provider, mode, temperature=0.25, max_tokens=7)
    assert content == "echo: hello there, pooled world"
    body = server.requests[0].json
    assert server.requests[0].path == "/v1/chat/completions"
    assert (body["model"], body["messages"]) == ("gpt-4o-mini", HELLO)
    assert (body["temperature"], body["max_tokens"]) == (0.25, 7)
    assert "stream" not in body


async def test_stream_deltas_join_to_chat_content(server: UpstreamServer, mode: str) -> None:
    async with chatter(server) as provider:
        whole = await chat(provider, mode)
        deltas = await stream(provider, mode, temperature=0.5)
    assert len(deltas) > 1
    assert all(deltas)
    assert "".join(deltas) == whole
    body = server.requests[1].json
    assert (body["stream"], body["temperature"]) == (True, 0.5)
    assert server.requests[1].headers["accept"] == "text/event-stream"


async def test_azure_uses_deployment_path_query_and_api_key_header(
    server: UpstreamServer, mode: str
) -> None:
    azure = {"type": "azure", "base_url": server.origin, "api_version": "2024-06-01",
             "deployment": "emb-prod"}
    async with create_provider("embedding", config(**azure)) as provider:
        assert await embed(provider, mode, ["hi"]) == [server.expected_embedding("hi")]
    async with create_provider("llm", config(**{**azure, "deployment": "chat-prod"})) as provider:
        assert await chat(provider, mode) == "echo: hello there, pooled world"
    for request, deployment, op in zip(server.requests, ("emb-prod", "chat-prod"),
                                       ("embeddings", "chat/completions"), strict=True):
        assert request.path == f"/openai/deployments/{deployment}/{op}"
        assert request.query == {"api-version": "2024-06-01"}
        assert request.headers["api-key"] == KEY
        assert "authorization" not in request.headers


async def test_openai_sends_bearer_authorization(server: UpstreamServer, mode: str) -> None:
    async with embedder(server) as provider:
        await embed(provider, mode, ["x"])
    headers = server.requests[0].headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in headers
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(("fault", "exc_type", "retry_after"), [
    (Fault(status=401), errors.AuthenticationError, None),
    (Fault(status=403), errors.AuthenticationError, None),
    (Fault(status=429, headers={"Retry-After": "2"}), errors.RateLimitError, 2.0),
    (Fault(status=429, headers={"retry-after-ms": "1500"}), errors.RateLimitError, 1.5),
    (Fault(status=429), errors.RateLimitError, None),
    (Fault(status=503), errors.ServerError, None),
    (Fault(status=500), errors.ServerError, None),
    (Fault(status=400, body={"error": {"message": "input is too long"}}),
     errors.UpstreamError, None),
    (Fault(status=404), errors.UpstreamError, None),
], ids=lambda v: str(getattr(v, "status", "")) or None)
@pytest.mark.parametrize("kind", ["embedding", "llm"])
async def test_error_status_maps_to_upstream_error(
    server: UpstreamServer, mode: str, kind: str, fault: Fault,
    exc_type: type[errors.UpstreamError], retry_after: float | None,
) -> None:
    server.add_fault(fault)
    async with (embedder if kind == "embedding" else chatter)(server, name="up") as provider:
        with pytest.raises(errors.UpstreamError) as info:
            await call(provider, mode)
    exc = info.value
    assert type(exc) is exc_type
    assert_rag_error(exc)
    op = "embeddings" if kind == "embedding" else "chat/completions"
    assert (exc.provider, exc.endpoint, exc.status) == ("up", f"{server.base_url}/{op}",
                                                        fault.status)
    expected = (fault.body or {}).get("error", {}).get("message",
                                                       f"Injected fault: HTTP {fault.status}")
    assert exc.message == expected
    assert expected in str(exc)
    assert str(fault.status) in str(exc)
    if exc_type is errors.RateLimitError:
        assert isinstance(exc, errors.RateLimitError)
        assert exc.retry_after == retry_after


async def test_azure_error_endpoint_has_no_query_or_key(server: UpstreamServer, mode: str) -> None:
    server.add_fault(Fault(status=401))
    cfg = config(type="azure", base_url=server.origin, api_version="2024-06-01",
                 deployment="d1")
    async with create_provider("embedding", cfg) as provider:
        with pytest.raises(errors.AuthenticationError) as info:
            await embed(provider, mode, ["x"])
    assert info.value.endpoint == f"{server.origin}/openai/deployments/d1/embeddings"
    assert "api-version" not in str(info.value)
    assert KEY not in str(info.value)


@pytest.mark.parametrize(("kind", "body"), [
    ("embedding", {"object": "list", "model": "m"}),
    ("embedding", {"data": [{"index": 0}]}),
    ("embedding", {"data": [{"index": 0, "embedding": []}]}),
    ("llm", {"choices": []}),
    ("llm", {"choices": [{"message": {"content": None}}]}),
])
async def test_malformed_200_raises_malformed_response_error(
    server: UpstreamServer, mode: str, kind: str, body: dict[str, Any]
) -> None:
    server.add_fault(Fault(status=200, body=body))
    async with (embedder if kind == "embedding" else chatter)(server) as provider:
        with pytest.raises(errors.MalformedResponseError) as info:
            await call(provider, mode)
    assert_rag_error(info.value)
    assert info.value.endpoint.startswith(server.base_url)
    assert info.value.provider == "openai"


async def test_error_status_before_stream_raises_server_error(
    server: UpstreamServer, mode: str
) -> None:
    server.add_fault(Fault(status=500, body={"error": {"message": "model overloaded"}}))
    async with chatter(server) as provider:
        with pytest.raises(errors.ServerError) as info:
            await stream(provider, mode)
        assert "".join(await stream(provider, mode)) == "echo: hello there, pooled world"
    assert (info.value.status, info.value.message) == (500, "model overloaded")
    assert info.value.endpoint == f"{server.base_url}/chat/completions"


async def test_connection_refused_raises_connect_error(mode: str) -> None:
    cfg = config(base_url=f"http://127.0.0.1:{closed_port()}/v1", connect_timeout=2)
    async with create_provider("embedding", cfg) as provider:
        with pytest.raises(errors.ConnectError) as info:
            await embed(provider, mode, ["x"])
    assert_rag_error(info.value)
    assert info.value.endpoint.endswith("/v1/embeddings")


async def test_slow_upstream_raises_read_timeout_error(server: UpstreamServer, mode: str) -> None:
    server.delay = 1.0
    async with embedder(server, read_timeout=0.2) as provider:
        with pytest.raises(errors.ReadTimeoutError) as info:
            await embed(provider, mode, ["x"])
    assert_rag_error(info.value)
    assert isinstance(info.value, TimeoutError)
    assert "read_timeout=0.2" in str(info.value)


async def test_truncated_stream_raises_connection_lost(server: UpstreamServer, mode: str) -> None:
    server.add_fault(Fault(action="truncate_stream"))
    async with chatter(server) as provider:
        with pytest.raises(errors.TransportError) as info:
            await stream(provider, mode)
    assert isinstance(info.value, errors.ConnectionLostError)
    assert_rag_error(info.value)


@pytest.mark.parametrize("action", ["truncate_stream", "close", "reset"])
async def test_dropped_connection_raises_connection_lost(
    server: UpstreamServer, mode: str, action: Any
) -> None:
    server.add_fault(Fault(action=action))
    async with embedder(server) as provider:
        with pytest.raises(errors.ConnectionLostError) as info:
            await embed(provider, mode, ["x"])
    assert_rag_error(info.value)
    assert info.value.provider == "openai"


async def test_https_with_ca_bundle_works(mode: str) -> None:
    with UpstreamServer(tls=True, api_key=KEY) as server:
        assert server.ca_cert_path is not None
        async with embedder(server, verify=server.ca_cert_path) as provider:
            assert await embed(provider, mode, ["tls"]) == [server.expected_embedding("tls")]
        assert server.base_url.startswith("https://")


async def test_https_with_system_cas_rejects_unknown_ca(mode: str) -> None:
    with UpstreamServer(tls=True, api_key=KEY) as server:
        async with embedder(server, verify=True) as provider:
            with pytest.raises(errors.ConnectError) as info:
                await embed(provider, mode, ["tls"])
    assert_rag_error(info.value)


def test_sync_use_after_close_raises_provider_closed(server: UpstreamServer) -> None:
    provider = embedder(server)
    assert provider.embed(["x"]) == [server.expected_embedding("x")]
    provider.close()
    provider.close()
    with pytest.raises(errors.ProviderClosedError):
        provider.embed(["x"])
    with chatter(server) as llm:
        pass
    with pytest.raises(errors.ProviderClosedError):
        llm.chat(HELLO)
    with pytest.raises(errors.ProviderClosedError):
        list(llm.stream(HELLO))
    assert len(server.requests) == 1


async def test_async_use_after_close_raises_provider_closed(server: UpstreamServer) -> None:
    provider = embedder(server)
    assert await provider.aembed(["x"]) == [server.expected_embedding("x")]
    await provider.aclose()
    await provider.aclose()
    provider.close()
    with pytest.raises(errors.ProviderClosedError):
        await provider.aembed(["x"])
    async with chatter(server) as llm:
        pass
    with pytest.raises(errors.ProviderClosedError):
        await llm.achat(HELLO)
    with pytest.raises(errors.ProviderClosedError):
        [d async for d in llm.astream(HELLO)]
    assert len(server.requests) == 1
