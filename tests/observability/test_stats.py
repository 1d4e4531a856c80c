"""Pool statistics are exact: they match what a real server on 127.0.0.1 counted."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import PYREQWEST, embed_concurrently, eventually, provider_config

from rag_llm.errors import ServerError
from rag_llm.observability.stats import ClientStatsSnapshot
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer

TRANSPORTS = ["httpx2", "aiohttp", PYREQWEST]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def embedder(server: UpstreamServer, transport: str, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding", provider_config(server, transport=transport, **overrides))


def stats_of(provider: EmbeddingProvider, client: str) -> ClientStatsSnapshot:
    return next(c.stats for c in provider.pool_stats().clients if c.client == client)


@pytest.mark.parametrize(("calls", "concurrency"), [(200, 1), (600, 30)])
async def test_opened_connections_and_requests_match_the_server(
    upstream: UpstreamServer, transport: str, calls: int, concurrency: int,
) -> None:
    async with embedder(upstream, transport, max_keepalive_connections=concurrency) as provider:
        await embed_concurrently(provider, calls, concurrency)
        stats = stats_of(provider, "async")
    assert stats.connections_opened == upstream.connections_accepted
    assert stats.requests_total == upstream.requests_served == calls
    assert stats.requests == {("embeddings", "200"): calls}
    assert stats.reuse_ratio == pytest.approx(calls / upstream.connections_accepted)
    assert stats.latency["embeddings"].count == calls


def test_sync_calls_from_threads_are_counted_exactly(upstream: UpstreamServer) -> None:
    with embedder(upstream, "httpx2", max_connections=4, max_keepalive_connections=4) as p, \
            ThreadPoolExecutor(8) as threads:
        list(threads.map(lambda i: p.embed([f"t{i}"]), range(300)))
        stats = stats_of(p, "sync")
    assert stats.connections_opened == upstream.connections_accepted <= 4
    assert stats.requests_total == upstream.requests_served == 300


async def test_pool_wait_is_recorded_when_max_connections_is_the_bottleneck(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 0.05
    async with embedder(upstream, transport, max_connections=2,
                        max_keepalive_connections=2) as provider:
        await embed_concurrently(provider, 12, 6)
        waited = stats_of(provider, "async").pool_wait
    assert waited.count == 12
    # 6 callers share 2 connections: most of them wait about a response time or more.
    assert waited.sum / waited.count > 0.03


async def test_pool_wait_is_near_zero_when_connections_are_free(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 0.05
    async with embedder(upstream, transport) as provider:
        await embed_concurrently(provider, 12, 6)
        waited = stats_of(provider, "async").pool_wait
    assert waited.count == 12
    assert waited.sum / waited.count < 0.01
    assert stats_of(provider, "async").requests_waiting == 0


async def test_connection_the_server_closes_while_idle_counts_as_server_closed(
    upstream: UpstreamServer, transport: str,
) -> None:
    if transport == "pyreqwest":
        pytest.skip("hyper's connections are not seen: a server's close is not known")
    upstream.idle_timeout = 0.1
    async with embedder(upstream, transport) as provider:
        await provider.aembed(["x"])
        assert await eventually(
            lambda: stats_of(provider, "async").connections_closed == {"server_closed": 1})
        await provider.aembed(["x"])
    assert stats_of(provider, "async").connections_closed == {"server_closed": 1, "shutdown": 1}


async def test_idle_connection_past_keepalive_expiry_counts_as_expired(
    upstream: UpstreamServer, transport: str,
) -> None:
    async with embedder(upstream, transport, keepalive_expiry=0.2) as provider:
        await provider.aembed(["x"])
        assert await eventually(
            lambda: stats_of(provider, "async").connections_closed == {"expired": 1})


def test_sync_idle_connections_close_with_reasons(upstream: UpstreamServer) -> None:
    with embedder(upstream, "httpx2", keepalive_expiry=0.2) as provider:
        provider.embed(["x"])
        assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3)
        assert stats_of(provider, "sync").connections_closed == {"expired": 1}
        provider.embed(["x"])
    assert stats_of(provider, "sync").connections_closed == {"expired": 1, "shutdown": 1}


async def test_errors_resends_and_outcomes_are_counted(
    upstream: UpstreamServer, transport: str,
) -> None:
    async with embedder(upstream, transport) as provider:
        await provider.aembed(["warm"])
        upstream.add_fault(Fault(action="close", only_reused=True))
        await provider.aembed(["resent once"])
        upstream.add_fault(Fault(status=503))
        with pytest.raises(ServerError):
            await provider.aembed(["fails"])
        stats = stats_of(provider, "async")
    assert stats.resent == 1
    assert stats.requests == {("embeddings", "200"): 2, ("embeddings", "503"): 1}
    assert stats.errors == {"ServerError": 1}
    assert stats.last_error is not None
    assert "503" in stats.last_error
    assert stats.connections_closed.get("server_closed", 0) + stats.connections_closed.get(
        "error", 0) >= 1


async def test_streams_record_time_to_first_token(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.stream_interval = 0.02
    config = provider_config(upstream, model="gpt-4o-mini", transport=transport)
    async with create_provider("llm", config) as llm:
        async for _ in llm.astream([{"role": "user", "content": "one two three four"}]):
            pass
        stats = next(c.stats for c in llm.pool_stats().clients if c.client == "async")
    assert stats.time_to_first_token.count == 1
    assert stats.requests == {("chat_stream", "200"): 1}
    assert stats.latency["chat_stream"].sum > stats.time_to_first_token.sum


async def test_tls_handshakes_are_timed(tls_upstream: UpstreamServer) -> None:
    async with embedder(tls_upstream, "httpx2") as provider:
        await provider.aembed(["x"])
        stats = stats_of(provider, "async")
    assert stats.tls.count == 1
    assert stats.connect.count == 1


async def test_slow_requests_and_pool_saturation_are_logged_once_per_interval(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 0.15
    async with embedder(upstream, transport, max_connections=1, max_keepalive_connections=1,
                        slow_request_seconds=0.1) as provider:
        with capture_logs() as logs:
            await asyncio.gather(*(provider.aembed([f"t{i}"]) for i in range(3)))
    slow = [e for e in logs if e["event"] == "slow_request"]
    saturated = [e for e in logs if e["event"] == "pool_saturated"]
    assert len(slow) == 1  # three slow calls, one warning per interval
    assert slow[0]["operation"] == "embeddings"
    assert slow[0]["threshold_s"] == 0.1
    assert slow[0]["log_level"] == "warning"
    assert len(saturated) == 1
    assert saturated[0]["max_connections"] == 1
    assert saturated[0]["waited_s"] >= 0.1
