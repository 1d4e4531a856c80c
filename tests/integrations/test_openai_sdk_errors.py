"""Failures under the openai SDK on rag-llm's httpx clients: rag-llm retries, the SDK raises
its own typed errors once, and the upstream sees rag-llm's attempts only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from support import KEY, closed_port

from rag_llm.integrations.openai import async_http_client, http_client
from rag_llm.testing import Fault, UpstreamServer

SDK_KEY = "sk-sdk-placeholder-must-not-travel"
USER = [{"role": "user", "content": "tell me about pools"}]
ATTEMPTS = 3


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY) as upstream:
        yield upstream


def retrying(base_url: str, **overrides: Any) -> dict[str, Any]:
    """A relay config that makes ATTEMPTS attempts, quickly, with no breaker in the way."""
    config: dict[str, Any] = {
        "type": "openai", "base_url": base_url, "api_key": KEY, "name": "sdk",
        "retry": {"max_attempts": ATTEMPTS, "base_delay": 0.01, "max_delay": 0.02},
        "circuit_breaker": False,
    }
    config.update(overrides)
    return config


def sdk_on(config: dict[str, Any]) -> openai.OpenAI:
    """The SDK with its own default retries (2) left on: they must not add attempts."""
    sdk = openai.OpenAI(api_key=SDK_KEY, http_client=http_client(config))
    assert sdk.max_retries == 2
    return sdk


def attempts(http: Any) -> int:
    """Attempts rag-llm's router made, over every endpoint and outcome."""
    return sum(sum(e.attempts.values()) for e in http.provider.routing_stats().endpoints)


def test_a_429_is_retried_by_rag_llm_only_then_raised_as_rate_limit_error(
        server: UpstreamServer) -> None:
    server.add_fault(Fault(status=429, headers={"Retry-After": "0.01"}, times=10))
    with sdk_on(retrying(server.base_url)) as sdk, \
            pytest.raises(openai.RateLimitError) as caught:
        sdk.embeddings.create(model="m", input="x")
    assert len(server.requests) == ATTEMPTS
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "0.01"  # the upstream's headers
    assert error.response.headers["x-should-retry"] == "false"
    assert error.body == {"message": "Injected fault: HTTP 429", "type": "requests",
                          "param": None, "code": "rate_limit_exceeded"}


def test_a_429_that_clears_is_answered_after_rag_llm_retries(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=429, headers={"Retry-After": "0.01"}, times=2))
    http = http_client(retrying(server.base_url))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        assert sdk.embeddings.create(model="m", input="x").data
    assert len(server.requests) == ATTEMPTS
    assert http.provider.routing_stats().retries == 2


def test_a_500_is_retried_by_rag_llm_only_then_raised_as_server_error(
        server: UpstreamServer) -> None:
    server.add_fault(Fault(status=500, times=10))
    with sdk_on(retrying(server.base_url)) as sdk, \
            pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert len(server.requests) == ATTEMPTS
    assert caught.value.status_code == 500


def test_a_non_retryable_status_is_sent_once(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=400, times=10))
    with sdk_on(retrying(server.base_url)) as sdk, pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="m", input="x")
    assert len(server.requests) == 1


def test_a_streams_error_status_is_retried_then_raised(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=503, times=10))
    with sdk_on(retrying(server.base_url)) as sdk, \
            pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    assert len(server.requests) == ATTEMPTS
    assert caught.value.status_code == 503


async def test_a_stream_is_retried_before_its_first_event(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=503, times=1))
    http = async_http_client(retrying(server.base_url))
    async with openai.AsyncOpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=USER,
                                                   stream=True)
        deltas = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(d or "" for d in deltas) == "echo: tell me about pools"
    assert len(server.requests) == 2


def test_a_stream_broken_after_its_first_event_is_not_retried(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="truncate_stream"))
    with sdk_on(retrying(server.base_url)) as sdk:
        stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        chunks = iter(stream)
        received = [next(chunks).choices[0].delta.content]
        with pytest.raises(openai.APIConnectionError) as caught:
            next(chunks)
    assert received == ["echo: "]
    # As a body cut off under plain httpx: the SDK wraps httpx's error.
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert "stream interrupted" in str(caught.value.__cause__)
    assert len(server.requests) == 1


def test_a_refused_connection_raises_api_connection_error_after_rag_llm_attempts() -> None:
    http = http_client(retrying(f"http://127.0.0.1:{closed_port()}/v1"))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk, \
            pytest.raises(openai.APIConnectionError) as caught:
        sdk.embeddings.create(model="m", input="x")
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert attempts(http) == ATTEMPTS
    assert "cannot connect" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_a_dropped_connection_is_retried_by_rag_llm_only(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="close", times=10))
    http = async_http_client(retrying(server.base_url))
    async with openai.AsyncOpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        with pytest.raises(openai.APIConnectionError):
            await sdk.embeddings.create(model="m", input="x")
    assert len(server.requests) == ATTEMPTS
    assert attempts(http) == ATTEMPTS


def test_a_timeout_raises_api_timeout_error_after_rag_llm_attempts(
        server: UpstreamServer) -> None:
    server.add_fault(Fault(action="blackhole", times=10))
    http = http_client(retrying(server.base_url, read_timeout=0.2))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk, \
            pytest.raises(openai.APITimeoutError):
        sdk.embeddings.create(model="m", input="x")
    assert len(server.requests) == ATTEMPTS


def test_an_upstream_echo_of_the_key_is_redacted(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=401, body={"error": {"message": f"bad key {KEY}"}}))
    with sdk_on(retrying(server.base_url)) as sdk, \
            pytest.raises(openai.AuthenticationError) as caught:
        sdk.models.list()
    assert KEY not in str(caught.value)
    assert KEY not in caught.value.response.text
    assert "bad key" in str(caught.value)
    assert len(server.requests) == 1


def test_failures_count_in_rag_llm_metrics(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=429, headers={"Retry-After": "0.01"}, times=10))
    http = http_client(retrying(server.base_url))
    with openai.OpenAI(api_key=SDK_KEY, http_client=http) as sdk:
        with pytest.raises(openai.RateLimitError):
            sdk.embeddings.create(model="m", input="x")
        server.clear_faults()
        sdk.embeddings.create(model="m", input="x")
    (sync,) = [c for c in http.provider.pool_stats().clients if c.client == "sync"]
    assert sync.stats.requests == {("embeddings", "429"): 1, ("embeddings", "200"): 1}
    (endpoint,) = http.provider.routing_stats().endpoints
    assert endpoint.attempts == {"429": ATTEMPTS, "ok": 1}
