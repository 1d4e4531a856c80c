"""The official openai SDK on rag-llm's httpx clients, over real sockets: every call, its
pooling and limits, its metrics, its credentials, and who closes what."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from support import KEY, eventually

from rag_llm.errors import ConfigError
from rag_llm.integrations.openai import (
    async_client,
    async_http_client,
    client,
    http_client,
)
from rag_llm.testing import UpstreamServer

SDK_KEY = "sk-sdk-placeholder-must-not-travel"
USER = [{"role": "user", "content": "tell me about pools"}]


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    """An upstream that accepts only rag-llm's key."""
    with UpstreamServer(api_key=KEY) as upstream:
        yield upstream


def relay_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"type": "openai", "base_url": server.base_url, "api_key": KEY,
                              "name": "sdk"}
    config.update(overrides)
    return config


def vector(server: UpstreamServer, text: str) -> Any:
    """The server's vector for ``text``, as the SDK decodes it (base64 float32s)."""
    return pytest.approx(server.expected_embedding(text), abs=1e-6)


def requests_counted(http: Any) -> dict[tuple[str, str], int]:
    """The provider's calls by (operation, outcome), over its sync and async clients."""
    counted: dict[tuple[str, str], int] = {}
    for snapshot in http.provider.pool_stats().clients:
        for key, count in snapshot.stats.requests.items():
            counted[key] = counted.get(key, 0) + count
    return counted


def test_sync_sdk_calls_go_through_one_pooled_connection(server: UpstreamServer) -> None:
    http = http_client(relay_config(server))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        embedded = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert [d.embedding for d in embedded.data] == [vector(server, "a"),
                                                       vector(server, "b")]
        reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert reply.choices[0].message.content == "echo: tell me about pools"
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 5
        stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True,
                                             stream_options={"include_usage": True})
        chunks = list(stream)
        deltas = [c.choices[0].delta.content for c in chunks if c.choices]
        assert "".join(d or "" for d in deltas) == "echo: tell me about pools"
        assert chunks[-1].usage is not None  # the usage-only chunk came through whole
        assert [m.id for m in sdk.models.list()] == ["text-embedding-3-small", "gpt-4o-mini"]
        for _ in range(5):
            sdk.embeddings.create(model="text-embedding-3-small", input="again")

    assert server.connections_accepted == 1
    assert [r.path for r in server.requests[:4]] == [
        "/v1/embeddings", "/v1/chat/completions", "/v1/chat/completions", "/v1/models"]
    assert server.requests[2].json["stream"] is True  # the body went as the SDK wrote it
    counted = requests_counted(http)
    assert counted == {("embeddings", "200"): 6, ("chat", "200"): 1,
                       ("chat_stream", "200"): 1, ("models", "200"): 1}


async def test_async_sdk_calls_go_through_one_pooled_connection(
        server: UpstreamServer) -> None:
    http = async_http_client(relay_config(server))
    async with openai.AsyncOpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        embedded = await sdk.embeddings.create(model="text-embedding-3-small", input="a")
        assert embedded.data[0].embedding == vector(server, "a")
        reply = await sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert reply.choices[0].message.content == "echo: tell me about pools"
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=USER,
                                                   stream=True)
        deltas = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(d or "" for d in deltas) == "echo: tell me about pools"
        assert [m.id async for m in sdk.models.list()] == ["text-embedding-3-small",
                                                           "gpt-4o-mini"]
        for _ in range(5):
            await sdk.embeddings.create(model="text-embedding-3-small", input="again")

    assert server.connections_accepted == 1
    assert requests_counted(http) == {("embeddings", "200"): 6, ("chat", "200"): 1,
                                      ("chat_stream", "200"): 1, ("models", "200"): 1}


async def test_stream_deltas_arrive_as_the_upstream_sends_them(server: UpstreamServer) -> None:
    server.stream_interval = 0.25  # between events: 7 of them take 1.5 s
    async with async_client(relay_config(server)) as sdk:
        started = time.monotonic()
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=USER,
                                                   stream=True)
        arrivals = [time.monotonic() - started async for c in stream if c.choices]
    assert len(arrivals) == 6  # five words and the stop chunk
    assert arrivals[0] < 0.6 < 1.2 < arrivals[-1]  # the first long before the last
    assert server.connections_accepted == 1


def test_sync_stream_deltas_arrive_as_the_upstream_sends_them(
        server: UpstreamServer) -> None:
    server.stream_interval = 0.25
    with client(relay_config(server)) as sdk:
        started = time.monotonic()
        stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        arrivals = [time.monotonic() - started for c in stream if c.choices]
    assert arrivals[0] < 0.6 < 1.2 < arrivals[-1]


def test_a_stream_left_early_frees_its_connection(server: UpstreamServer) -> None:
    server.stream_interval = 0.05
    # One connection at most: the next call runs only once the stream gave it back.
    http = http_client(relay_config(server, max_connections=1, max_keepalive_connections=1,
                                    pool_timeout=2))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content == "echo: "
        stream.close()
        assert sdk.embeddings.create(model="m", input="x").data
    assert requests_counted(http) == {("chat_stream", "cancelled"): 1,
                                      ("embeddings", "200"): 1}


def test_the_sdk_key_stays_home_and_rag_llm_key_goes(server: UpstreamServer) -> None:
    http = http_client(relay_config(server))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http,
                       default_headers={"x-trace": "t-1"}) as sdk:
        sdk.embeddings.create(model="m", input="x")
        sdk.models.list()
        assert KEY not in repr(http)
        assert KEY not in repr(http._transport)
        assert KEY not in repr(http.provider)
    for request in server.requests:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert SDK_KEY not in str(request.headers)
        assert request.headers["x-trace"] == "t-1"  # the SDK's other headers pass


def test_max_connections_hold_under_concurrent_sdk_calls(server: UpstreamServer) -> None:
    server.delay = 0.05

    async def main() -> None:
        http = async_http_client(relay_config(server, max_connections=2,
                                              max_keepalive_connections=2))
        async with openai.AsyncOpenAI(api_key=SDK_KEY, http_client=http) as sdk:
            replies = await asyncio.gather(*(
                sdk.embeddings.create(model="m", input=f"text {n}") for n in range(10)))
        assert [r.data[0].embedding for r in replies] == [
            vector(server, f"text {n}") for n in range(10)]
        assert requests_counted(http) == {("embeddings", "200"): 10}

    asyncio.run(main())
    assert server.requests_served == 10
    assert server.max_concurrent_connections <= 2


def test_the_async_client_serves_several_event_loops(server: UpstreamServer) -> None:
    sdk = async_client(relay_config(server))

    async def embed(text: str) -> list[float]:
        return (await sdk.embeddings.create(model="m", input=text)).data[0].embedding

    assert asyncio.run(embed("one")) == vector(server, "one")
    assert asyncio.run(embed("two")) == vector(server, "two")
    asyncio.run(sdk.close())
    assert sdk._client.provider.pool.state.value == "closed"  # type: ignore[attr-defined]


async def test_closing_the_sdk_closes_the_providers_pools(server: UpstreamServer) -> None:
    http = async_http_client(relay_config(server))
    sdk = openai.AsyncOpenAI(api_key=SDK_KEY, http_client=http)
    await sdk.embeddings.create(model="m", input="x")
    assert server.connections_open == 1
    await sdk.close()
    assert http.provider.pool.state.value == "closed"
    assert await eventually(lambda: server.connections_open == 0)


def test_closing_the_http_client_closes_the_sync_pool(server: UpstreamServer) -> None:
    http = http_client(relay_config(server))
    sdk = openai.OpenAI(api_key=SDK_KEY, http_client=http)
    sdk.embeddings.create(model="m", input="x")
    http.close()
    assert http.provider.pool.state.value == "closed"


def test_client_builds_the_sdk_at_the_providers_base_url_without_retries(
        server: UpstreamServer) -> None:
    with client(relay_config(server), timeout=30.0) as sdk:
        assert sdk.max_retries == 0
        assert str(sdk.base_url).rstrip("/") == server.base_url
        assert sdk.embeddings.create(model="m", input="x").data
    with pytest.raises(TypeError, match="max_retries"):
        client(relay_config(server), max_retries=3)


def test_a_request_outside_the_providers_base_path_is_refused(server: UpstreamServer) -> None:
    with openai.OpenAI(api_key=SDK_KEY, base_url="http://127.0.0.1:1/api",
                       http_client=http_client(relay_config(server))) as sdk, \
            pytest.raises(ConfigError, match="base_url") as caught:
        sdk.models.list()
    assert "'/v1'" in str(caught.value)
    assert server.requests_served == 0


def test_a_config_without_http_api_is_refused() -> None:
    with pytest.raises(ConfigError, match="type"):
        http_client({"type": "local", "model": "all-MiniLM-L6-v2"})
    with pytest.raises(ConfigError, match="max_connections"):
        http_client({"type": "openai", "base_url": "http://127.0.0.1:9/v1",
                     "max_connections": 0})


def test_azure_sdk_requests_keep_their_deployment_and_api_version() -> None:
    with UpstreamServer(api_key=KEY) as upstream:
        config = {"type": "azure", "base_url": upstream.origin, "api_key": KEY,
                  "api_version": "2024-10-21"}
        with openai.AzureOpenAI(azure_endpoint=upstream.origin, api_version="2024-10-21",
                                api_key=SDK_KEY, http_client=http_client(config)) as sdk:
            assert sdk.embeddings.create(model="emb", input="x").data
        (request,) = upstream.requests
        assert request.path == "/openai/deployments/emb/embeddings"
        assert request.headers["api-key"] == KEY
        assert "authorization" not in request.headers


def test_paths_and_queries_pass_and_metrics_labels_stay_few(server: UpstreamServer) -> None:
    http = http_client(relay_config(server))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        sdk.models.list(extra_query={"limit": "2"})
        with pytest.raises(openai.NotFoundError):
            sdk.files.retrieve("file-abc123")  # an id in the path: not a label
    listed, retrieved = server.requests
    assert listed.query == {"limit": "2"}
    assert retrieved.path == "/v1/files/file-abc123"
    assert requests_counted(http) == {("models", "200"): 1, ("other", "404"): 1}


def test_a_token_rate_limit_weighs_the_sdks_request(server: UpstreamServer) -> None:
    # 400 characters weigh about 100 tokens: more than the burst ever admits.
    http = http_client(relay_config(server, tokens_per_minute=600, token_burst=50))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        assert sdk.embeddings.create(model="m", input="short").data
        with pytest.raises(openai.APIConnectionError, match="tokens_per_minute") as caught:
            sdk.embeddings.create(model="m", input="x" * 400)
    assert type(caught.value.__cause__).__name__ == "RequestExceedsBurstError"
    assert server.requests_served == 1  # refused before anything was sent
