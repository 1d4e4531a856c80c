"""The OpenAI-compatible gateway, with the official openai SDK as the client.

The service runs under uvicorn on a real 127.0.0.1 port and its providers call the loopback
``UpstreamServer``, so every claim is about bytes on sockets: what the SDK parses, what the
upstream received, and how many TCP connections it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from support import KEY, eventually, provider_config

from rag_llm.api import create_app
from rag_llm.config import Secret, Settings
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagSettings
from rag_llm.testing import Fault, UpstreamServer

SERVICE_KEY = "sk-service-GATEWAY-0123456789"
CHAT = "gpt-4o-mini"
EMBEDDING = "text-embedding-3-small"


class Served:
    """``app`` under uvicorn in a thread; the providers live on that thread's loop."""

    def __init__(self, app: FastAPI, locator: ServiceLocator) -> None:
        self.locator = locator
        config = uvicorn.Config(app, log_config=None, log_level="warning", ws="none",
                                loop="asyncio", lifespan="on")
        self.server = uvicorn.Server(config)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self.server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self._thread.is_alive(), "uvicorn failed to start"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()
        assert not self._thread.is_alive(), "uvicorn did not stop"

    def provider(self, kind: str) -> Any:
        return self.locator.providers()[kind]

    def client(self, key: str | None = SERVICE_KEY) -> openai.AsyncOpenAI:
        # No retries: each test counts the requests it makes.
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key or "unused",
                                  max_retries=0, timeout=10)


ServeFactory = Callable[..., Served]


@pytest.fixture
def serve(upstream: UpstreamServer, tmp_path: Path) -> Iterator[ServeFactory]:
    """Start the service: chat and embeddings on ``upstream``, the service key required."""
    started: list[Served] = []

    def start(*, chat: bool = True, embedder: Any = None, key: str | None = SERVICE_KEY,
              local: bool = False, **provider: Any) -> Served:
        """``local``: no embedding provider configured, so the service's default serves."""
        providers = {} if embedder is not None or local else {
            "embedding": provider_config(upstream, **provider)}
        if chat:
            providers["llm"] = provider_config(upstream, model=CHAT, **provider)
        locator = ServiceLocator(Settings(providers=providers))
        if embedder is not None:
            locator.register("embedding", embedder)
        settings = RagSettings(data_dir=tmp_path / "data",
                               api_key=Secret(key) if key else None)
        served = Served(create_app(locator, rag_settings=settings), locator).__enter__()
        started.append(served)
        return served

    yield start
    for served in started:
        served.__exit__()


@pytest.fixture
def served(serve: ServeFactory) -> Served:
    return serve()


@pytest.fixture
async def client(served: Served) -> AsyncIterator[openai.AsyncOpenAI]:
    async with served.client() as sdk:
        yield sdk


def _in_flight(provider: Any) -> int:
    """Calls the provider counts as running (what its shutdown drains)."""
    count: int = provider._in_flight
    return count


def _active(provider: Any) -> int:
    return sum(c.active for c in provider.pool_stats().clients)


def _idle(provider: Any) -> int:
    return sum(c.idle for c in provider.pool_stats().clients)


# -- embeddings ----------------------------------------------------------------------------

async def test_embeddings_as_floats_are_the_upstreams_vectors(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    reply = await client.embeddings.create(model=EMBEDDING, input=["alpha", "beta gamma"],
                                           encoding_format="float")
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.data[0].embedding == upstream.expected_embedding("alpha")
    assert reply.data[1].embedding == upstream.expected_embedding("beta gamma")
    assert reply.model == EMBEDDING
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 2 + 3
    assert upstream.requests[-1].json["input"] == ["alpha", "beta gamma"]


async def test_embeddings_in_base64_decode_to_the_same_vectors(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    # With no encoding_format the SDK asks for base64 and decodes it itself.
    reply = await client.embeddings.create(model=EMBEDDING, input="one text")
    (datum,) = reply.data
    expected = upstream.expected_embedding("one text")
    assert datum.embedding == pytest.approx(expected, abs=1e-6)
    assert datum.embedding != expected  # float32, as OpenAI sends it: not the float64 values
    raw = await client.embeddings.with_raw_response.create(
        model=EMBEDDING, input="one text", encoding_format="base64")
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)


async def test_any_embedder_serves_embeddings(serve: ServeFactory) -> None:
    class Letters:
        """An in-process embedder: the vector counts a, b and c."""

        name = "letters"
        model = "letter-counts"

        async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
            items = [texts] if isinstance(texts, str) else list(texts)
            return [[float(t.count(c)) for c in "abc"] for t in items]

        def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
            raise AssertionError("the gateway embeds asynchronously")

        async def aclose(self) -> None: ...

        def close(self) -> None: ...

    served = serve(chat=False, embedder=Letters())
    async with served.client() as sdk:
        models = [m.id for m in (await sdk.models.list()).data]
        reply = await sdk.embeddings.create(model="letter-counts", input=["abba", "cab"],
                                            encoding_format="float")
        by_name = await sdk.embeddings.create(model="letters", input="c")
    assert models == ["letter-counts"]
    assert [d.embedding for d in reply.data] == [[2.0, 2.0, 0.0], [1.0, 1.0, 1.0]]
    assert by_name.data[0].embedding == [0.0, 0.0, 1.0]


async def test_with_no_embedding_configured_the_local_model_serves(
        serve: ServeFactory) -> None:
    pytest.importorskip("onnxruntime", reason="the local model needs the local extra")
    from rag_llm.providers import create_provider

    served = serve(chat=False, local=True)
    async with served.client() as sdk:
        (listed,) = (await sdk.models.list()).data
        reply = await sdk.embeddings.create(model="embedding", input=["a cat", "a dog"])
    assert (listed.id, listed.owned_by) == ("all-MiniLM-L6-v2", "local")
    assert reply.model == "all-MiniLM-L6-v2"
    with create_provider("embedding", {"type": "local"}) as local:
        expected = local.embed(["a cat", "a dog"])
    for datum, vector in zip(reply.data, expected, strict=True):
        assert len(datum.embedding) == 384
        assert datum.embedding == pytest.approx(vector, abs=1e-6)


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": EMBEDDING, "input": [1, 2, 3]}, "input", "token-id arrays"),
    ({"model": EMBEDDING, "input": [[1, 2], [3]]}, "input", "token-id arrays"),
    ({"model": EMBEDDING, "input": []}, "input", "non-empty"),
    ({"model": EMBEDDING, "input": ["a", ""]}, "input[1]", "empty string"),
    ({"model": EMBEDDING, "input": "a", "encoding_format": "int8"}, "encoding_format", "'int8'"),
    ({"model": EMBEDDING, "input": "a", "dimensions": 0}, "dimensions", "0"),
    ({"model": EMBEDDING, "input": "a", "dimensions": 256}, "dimensions", "256"),
    ({"model": EMBEDDING, "input": "a", "colour": "red"}, "colour", "colour"),
    ({"input": "a"}, "model", "model"),
])
async def test_a_bad_embeddings_body_is_a_400_naming_the_field(
        client: openai.AsyncOpenAI, body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/embeddings", body=body, cast_to=httpx.Response)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]


async def test_a_body_that_is_not_json_is_a_400(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        reply = await http.post("/embeddings", content=b"{not json",
                                headers={"authorization": f"Bearer {SERVICE_KEY}"})
    assert reply.status_code == 400
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_body_over_the_limit_is_a_413_in_openais_shape(
        client: openai.AsyncOpenAI, served: Served) -> None:
    texts = ["x" * 1000] * 100  # 100 kB, over max_request_bytes (64 KiB)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.embeddings.create(model="embedding", input=texts)
    assert caught.value.status_code == 413
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "request_too_large"
    assert "65536 bytes" in error["message"]
    async with httpx.AsyncClient(base_url=served.base_url.removesuffix("/v1")) as http:
        reply = await http.post("/v1/query", content=b"x" * 70_000,
                                headers={"authorization": f"Bearer {SERVICE_KEY}",
                                         "content-type": "application/json"})
    assert reply.status_code == 413
    assert set(reply.json()) == {"detail"}  # the service's own routes keep their shape


async def test_many_calls_share_one_upstream_connection(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    for n in range(30):
        await client.embeddings.create(model=EMBEDDING, input=f"text {n}")
    assert upstream.requests_served == 30
    assert upstream.connections_accepted == 1


# -- chat ----------------------------------------------------------------------------------

async def test_a_completion_is_the_upstreams_and_the_fields_pass_through(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    reply = await client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "hello there"}], temperature=0.2,
        max_tokens=7, stop=["\n"], seed=3)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.total_tokens == 2 + 3
    sent = upstream.requests[-1].json
    assert sent["model"] == CHAT  # the provider's model, whatever alias the client named
    assert {k: sent[k] for k in ("temperature", "max_tokens", "stop", "seed")} == {
        "temperature": 0.2, "max_tokens": 7, "stop": ["\n"], "seed": 3}
    assert "stream" not in sent


async def test_tools_go_to_the_upstream_and_its_tool_calls_come_back(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    tool = {"type": "function", "function": {
        "name": "weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    upstream.add_fault(Fault(status=200, body={
        "id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": CHAT,
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}))
    reply = await client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "weather in Oslo?"}], tools=[tool],
        tool_choice="auto")
    (made,) = reply.choices[0].message.tool_calls or []
    assert made.function.name == "weather"
    assert made.function.arguments == '{"city": "Oslo"}'
    assert reply.choices[0].finish_reason == "tool_calls"
    sent = upstream.requests[-1].json
    assert sent["tools"] == [tool]
    assert sent["tool_choice"] == "auto"


async def test_a_stream_relays_each_delta_as_it_arrives(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    upstream.stream_interval = 0.15
    words = "one two three four"
    stream = await client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": words}], stream=True,
        stream_options={"include_usage": True})
    arrivals: list[float] = []
    deltas: list[str] = []
    usage = None
    async for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(deltas) == f"echo: {words}"
    assert len(deltas) == 5  # one per word, as the upstream sent them
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Relayed one by one: the deltas came about one upstream interval apart, not all at the
    # end (one pair may bunch up when this loaded machine delays the client).
    assert sum(gap > 0.075 for gap in gaps[:4]) >= 3, gaps
    assert arrivals[4] - arrivals[0] > 0.4, gaps
    assert usage is not None
    assert usage.completion_tokens == 5
    assert upstream.requests[-1].json["stream"] is True


async def test_a_client_that_leaves_mid_stream_cancels_the_upstream_request(
        served: Served, upstream: UpstreamServer) -> None:
    upstream.stream_interval = 0.2
    question = " ".join(f"w{n}" for n in range(50))  # about 10 s of stream
    chat = served.provider("llm")
    async with served.client() as sdk:
        stream = await sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": question}], stream=True)
        async with stream:
            async for first in stream:
                assert first.choices[0].delta.content == "echo: "
                break
            assert upstream.connections_open == 1
            assert _in_flight(chat) == 1
            assert _active(chat) == 1
        # Closed on the gateway's side at once: the pool holds neither a busy nor an idle
        # connection (a half-read response cannot be reused).
        assert await eventually(lambda: _active(chat) == 0 and _idle(chat) == 0, within=0.5)
        assert _in_flight(chat) == 0
        # The gateway closes its upstream connection rather than read the rest.
        # The upstream notices at its next writes, one stream interval apart.
        assert await eventually(lambda: upstream.connections_open == 0, within=5)
        assert upstream.connections_closed_by_client == 1
        assert len(upstream.requests) == 1
        assert upstream.requests_served == 0
        # The pool is whole: the next stream is served, on a new connection.
        again = await sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], stream=True)
        upstream.stream_interval = 0.0
        text = "".join([c.choices[0].delta.content or "" async for c in again if c.choices])
    assert text == "echo: hi"
    assert _in_flight(chat) == 0
    assert _active(chat) == 0


async def test_a_stream_that_breaks_after_it_started_ends_with_an_error_event(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(action="truncate_stream"))
    stream = await client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "a b c d"}], stream=True)
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await read_all()
    assert received == ["echo: "]
    assert "a model provider failed" in caught.value.message
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"


async def test_a_stream_refused_before_it_started_keeps_its_status(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(status=429, headers={"Retry-After": "3"}))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert caught.value.response.headers["retry-after"] == "3"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "rate_limit_exceeded"


async def test_no_chat_model_configured_is_a_clear_404(serve: ServeFactory) -> None:
    served = serve(chat=False)
    async with served.client() as sdk:
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.chat.completions.create(model=CHAT, messages=[
                {"role": "user", "content": "hi"}])
    assert "no chat model is configured" in caught.value.message


async def test_a_chat_body_without_messages_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/chat/completions", body={"model": CHAT, "messages": []},
                          cast_to=httpx.Response)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "messages"


# -- models, keys, upstream failures -------------------------------------------------------

async def test_models_lists_the_configured_providers(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in page.data] == [
        (EMBEDDING, "model", "openai"), (CHAT, "model", "openai")]
    assert (await client.models.retrieve("llm")).id == CHAT


async def test_an_unknown_model_is_a_404_naming_the_available_ones(
        client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="text-embedding-9", input="x")
    assert f"'{EMBEDDING}'" in caught.value.message
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        await client.embeddings.create(model=CHAT, input="x")
    assert "is a chat model" in wrong_kind.value.message


async def test_a_wrong_key_is_an_authentication_error(
        served: Served, upstream: UpstreamServer) -> None:
    async with served.client(key="sk-wrong") as sdk:
        calls: list[Callable[[], Awaitable[Any]]] = [
            sdk.models.list,
            lambda: sdk.embeddings.create(model=EMBEDDING, input="x"),
            lambda: sdk.chat.completions.create(model=CHAT, messages=[
                {"role": "user", "content": "x"}], stream=True)]
        for call in calls:
            with pytest.raises(openai.AuthenticationError) as caught:
                await call()
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["code"] == "invalid_api_key"
            assert SERVICE_KEY not in caught.value.response.text
    assert upstream.requests_served == 0


async def test_a_missing_key_is_a_401_in_openais_shape(served: Served) -> None:
    # The SDK always sends a key: a bare HTTP client shows the request without one.
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        reply = await http.post("/embeddings", json={"model": EMBEDDING, "input": "x"})
        other_scheme = await http.get("/models", headers={"authorization": "Basic eDp5"})
    assert reply.status_code == other_scheme.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json() == {"error": {
        "message": "You didn't provide an API key: send 'Authorization: Bearer KEY'",
        "type": "invalid_request_error", "param": None, "code": "missing_api_key"}}


async def test_without_a_service_key_the_gateway_is_open(serve: ServeFactory) -> None:
    served = serve(key=None)
    async with served.client(key=None) as sdk:
        assert len((await sdk.models.list()).data) == 2


async def test_an_upstream_failure_is_a_502_in_openais_shape(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(status=500, body={"error": {"message": f"boom {KEY}"}}))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.embeddings.create(model=EMBEDDING, input="x")
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "server_error"
    assert body["code"] == "upstream_error"
    assert "HTTP 500" in body["message"]
    assert KEY not in caught.value.response.text
    assert "Traceback" not in caught.value.response.text


async def test_an_upstream_that_rejects_the_request_is_relayed_as_a_400(
        client: openai.AsyncOpenAI, upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(status=400, body={"error": {"message": "bad tool schema"}}))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=CHAT, messages=[
            {"role": "user", "content": "x"}])
    assert caught.value.message.endswith("bad tool schema")


async def test_an_upstream_timeout_is_a_504(serve: ServeFactory,
                                            upstream: UpstreamServer) -> None:
    served = serve(read_timeout=0.2)
    upstream.add_fault(Fault(delay=2.0))
    async with served.client() as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.embeddings.create(model=EMBEDDING, input="x")
    assert caught.value.status_code == 504
    await asyncio.sleep(0)  # the loop lets the upstream's delayed reply go
