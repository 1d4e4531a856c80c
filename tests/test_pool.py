"""Connection pooling, proven by counting TCP connections at a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import PYREQWEST, embed_concurrently, eventually, provider_config

from rag_llm.errors import ConnectionLostError, PoolTimeoutError, ProviderClosedError
from rag_llm.pool import ClientSnapshot
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer

TRANSPORTS = ["httpx2", "aiohttp", "httpx", PYREQWEST]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every pooling claim holds on every transport behind the seam."""
    return str(request.param)


def embedder(server: UpstreamServer, transport: str, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding", provider_config(server, transport=transport, **overrides))


async def test_200_sequential_async_calls_open_one_connection(
    upstream: UpstreamServer, transport: str,
) -> None:
    async with embedder(upstream, transport) as provider:
        for i in range(200):
            assert len(await provider.aembed([f"text {i}"])) == 1
    assert upstream.requests_served == 200
    assert upstream.connections_accepted == 1


def test_200_sequential_sync_calls_open_one_connection(
    upstream: UpstreamServer, transport: str,
) -> None:
    with embedder(upstream, transport) as provider:
        for i in range(200):
            assert len(provider.embed([f"text {i}"])) == 1
    assert upstream.requests_served == 200
    assert upstream.connections_accepted == 1


async def test_sequential_calls_over_https_open_one_connection(
    tls_upstream: UpstreamServer, transport: str,
) -> None:
    async with embedder(tls_upstream, transport) as provider:
        for _ in range(50):
            await provider.aembed(["secure"])
    assert tls_upstream.connections_accepted == 1


async def test_1000_calls_at_concurrency_50_open_at_most_50_connections(
    upstream: UpstreamServer, transport: str, request: pytest.FixtureRequest,
) -> None:
    if transport == "httpx":
        # Seen here: 1,000 connections for 1,000 calls when the upstream answers at once.
        request.applymarker(pytest.mark.xfail(
            strict=False, reason="httpcore 1.0.9 counts busy connections against "
            "max_keepalive_connections and can churn connections under load"))
    async with embedder(upstream, transport) as provider:
        assert await embed_concurrently(provider, 1000, 50) == 1000
    assert upstream.requests_served == 1000
    if transport == "pyreqwest":
        # hyper starts a connect for a call that finds no idle connection and keeps it
        # when an idle one comes back first: seen here 51 and 52, never a churn (1,000).
        assert upstream.max_in_flight <= 50
        assert 1 <= upstream.connections_accepted <= 55
    else:
        assert 1 <= upstream.connections_accepted <= 50


async def test_a_keepalive_limit_below_the_concurrency_does_not_churn(
    upstream: UpstreamServer, transport: str,
) -> None:
    if transport != "aiohttp":
        pytest.skip("httpcore closes a released connection beyond max_keepalive_connections "
                    "at once: 994 connections here for 1,000 calls")
    # Kept a moment instead, a few are reopened after a lull.
    async with embedder(upstream, transport, max_keepalive_connections=4) as provider:
        assert await embed_concurrently(provider, 1000, 50) == 1000
        assert upstream.connections_accepted <= 75
        assert await eventually(lambda: client(provider, "async").idle == 4, within=5.0)


async def test_max_connections_caps_connections_and_every_call_succeeds(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 0.002  # keeps requests in flight, so the cap is what limits them
    capped = embedder(upstream, transport, max_connections=10, max_keepalive_connections=10)
    async with capped as provider:
        assert await embed_concurrently(provider, 1000, 50) == 1000
    assert upstream.max_concurrent_connections <= 10
    assert upstream.connections_accepted <= 10


def test_max_connections_caps_sync_calls_from_threads(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 0.002
    capped = embedder(upstream, transport, max_connections=4, max_keepalive_connections=4)
    with capped as provider, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: provider.embed([f"t{i}"]), range(200)))
    assert len(results) == 200
    assert upstream.max_concurrent_connections <= 4


async def test_exhausted_pool_raises_pool_timeout_within_the_configured_time(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 1.0
    async with embedder(upstream, transport, max_connections=1, max_keepalive_connections=1,
                        pool_timeout=0.3) as provider:
        holder = asyncio.create_task(provider.aembed(["holds the only connection"]))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as caught:
            await provider.aembed(["waits for it"])
        waited = time.monotonic() - started
        await holder
    assert 0.25 <= waited < 0.9
    assert "max_connections=1" in str(caught.value)
    assert "pool_timeout=0.3s" in str(caught.value)


async def test_idle_async_connection_is_closed_after_keepalive_expiry(
    upstream: UpstreamServer, transport: str,
) -> None:
    async with embedder(upstream, transport, keepalive_expiry=0.3) as provider:
        await provider.aembed(["x"])
        assert upstream.connections_open == 1
        assert await eventually(lambda: upstream.connections_open == 0)
        assert upstream.connections_closed_by_client == 1
        assert client(provider, "async").idle == 0


def test_idle_sync_connection_is_closed_after_keepalive_expiry(
    upstream: UpstreamServer, transport: str,
) -> None:
    with embedder(upstream, transport, keepalive_expiry=0.3) as provider:
        provider.embed(["x"])
        assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)
        assert upstream.connections_closed_by_client == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_server_closing_idle_connections_early_fails_no_request(
    upstream: UpstreamServer, transport: str, mode: str,
) -> None:
    upstream.idle_timeout = 0.1  # the server gives up on idle connections long before we do
    with embedder(upstream, transport, keepalive_expiry=30.0) as provider:
        for _ in range(3):
            if mode == "sync":
                provider.embed(["x"])
            else:
                await provider.aembed(["x"])
            await asyncio.sleep(0.3)
        await provider.aclose()
    assert upstream.requests_served == 3
    assert upstream.connections_closed_by_server >= 2


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_request_on_a_reused_connection_the_server_dropped_is_resent_once(
    upstream: UpstreamServer, transport: str, mode: str,
) -> None:
    with embedder(upstream, transport) as provider:
        upstream.add_fault(Fault(action="close", only_reused=True))
        for _ in range(2):
            if mode == "sync":
                provider.embed(["x"])
            else:
                await provider.aembed(["x"])
        await provider.aclose()
    assert upstream.requests_served == 2
    assert upstream.connections_accepted == 2


async def test_failure_on_a_fresh_connection_is_not_resent(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.add_fault(Fault(action="close"))
    async with embedder(upstream, transport) as provider:
        with pytest.raises(ConnectionLostError):
            await provider.aembed(["x"])
    assert len(upstream.requests) == 1


def test_one_provider_works_across_two_asyncio_run_calls(
    upstream: UpstreamServer, transport: str,
) -> None:
    provider = embedder(upstream, transport)
    try:
        for _ in range(2):
            assert len(asyncio.run(provider.aembed(["a", "b"]))) == 2
        # The first loop's connection was closed while that loop shut down.
        assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)
        assert upstream.connections_accepted == 2
    finally:
        provider.close()


def _in_child(work: Any) -> int:
    """Run ``work`` in a forked child; its exit status (0 when it returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if work() else 3
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_opens_its_own_connections_sync(
    upstream: UpstreamServer, transport: str,
) -> None:
    if transport == "pyreqwest":
        pytest.skip("pyreqwest refuses to run in a forked child: tests/transport/test_pyreqwest.py")
    with embedder(upstream, transport) as provider:
        provider.embed(["parent"])
        assert _in_child(lambda: provider.embed(["child"]) and provider.embed(["again"])) == 0
        assert upstream.connections_accepted == 2  # the child's own, not the parent's
        provider.embed(["parent again"])
        assert upstream.connections_accepted == 2  # the parent's connection was left intact
    assert upstream.requests_served == 4


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
async def test_forked_child_opens_its_own_connections_async(
    upstream: UpstreamServer, transport: str,
) -> None:
    if transport == "pyreqwest":
        pytest.skip("pyreqwest refuses to run in a forked child: tests/transport/test_pyreqwest.py")
    async with embedder(upstream, transport) as provider:
        await provider.aembed(["parent"])
        # Forked from inside the running loop, as a pre-forking server would.
        assert _in_child(lambda: asyncio.run(provider.aembed(["child"]))) == 0
        assert upstream.connections_accepted == 2
        await provider.aembed(["parent again"])
        assert upstream.connections_accepted == 2
    assert upstream.requests_served == 3


async def test_1000_concurrent_first_calls_create_exactly_one_async_client(
    upstream: UpstreamServer, transport: str,
) -> None:
    async with embedder(upstream, transport) as provider:
        with capture_logs() as logs:
            transports = await asyncio.gather(
                *(provider.pool.async_transport() for _ in range(1000))
            )
        assert len({id(t) for t in transports}) == 1
        assert [e["event"] for e in logs].count("connection_pool_created") == 1


def test_1000_concurrent_first_calls_create_exactly_one_sync_client(
    upstream: UpstreamServer, transport: str,
) -> None:
    provider = embedder(upstream, transport)
    threads = 32
    barrier = threading.Barrier(threads)

    def first_call(i: int) -> int:
        if i < threads:  # the first wave starts together, racing to create the client
            barrier.wait(timeout=5)
        return id(provider.pool.sync_transport())

    try:
        with capture_logs() as logs, ThreadPoolExecutor(threads) as pool:
            ids = set(pool.map(first_call, range(1000)))
        assert len(ids) == 1
        assert [e["event"] for e in logs].count("connection_pool_created") == 1
    finally:
        provider.close()


async def test_close_is_idempotent_and_use_after_close_is_a_clear_error(
    upstream: UpstreamServer, transport: str,
) -> None:
    provider = embedder(upstream, transport)
    await provider.aembed(["x"])
    provider.embed(["x"])
    await provider.aclose()
    await provider.aclose()
    provider.close()
    with pytest.raises(ProviderClosedError, match="closed"):
        await provider.aembed(["x"])
    with pytest.raises(ProviderClosedError, match="closed"):
        provider.embed(["x"])
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)


def test_provider_collected_unclosed_warns(upstream: UpstreamServer, transport: str) -> None:
    provider = embedder(upstream, transport)
    provider.embed(["x"])
    with pytest.warns(ResourceWarning, match="unclosed"):
        del provider  # no reference cycle: collected right here
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)


def test_unused_provider_needs_no_close(upstream: UpstreamServer, transport: str) -> None:
    provider = embedder(upstream, transport)
    del provider
    gc.collect()
    assert upstream.connections_accepted == 0


def client(provider: EmbeddingProvider, name: str) -> ClientSnapshot:
    return next(c for c in provider.pool_stats().clients if c.client == name)


async def test_pool_stats_report_limits_and_connections(
    upstream: UpstreamServer, transport: str,
) -> None:
    limited = embedder(upstream, transport, max_connections=7, max_keepalive_connections=3)
    async with limited as provider:
        assert provider.pool_stats().state == "unopened"
        await provider.aembed(["x"])
        snapshot = provider.pool_stats()
    assert snapshot.state == "open"
    assert (snapshot.max_connections, snapshot.max_keepalive_connections) == (7, 3)
    assert [(c.client, c.open, c.active, c.idle) for c in snapshot.clients] == [
        ("sync", False, 0, 0), ("async", True, 0, 1)]
    assert snapshot.clients[1].library == (
        transport if transport in ("httpx", "aiohttp", "pyreqwest") else "httpx2")
    assert provider.pool_stats().state == "closed"


async def test_streamed_chats_reuse_one_connection(upstream: UpstreamServer, transport: str,
                                                  ) -> None:
    messages = [{"role": "user", "content": "stream this reply"}]
    config = provider_config(upstream, model="gpt-4o-mini", transport=transport)
    async with create_provider("llm", config) as llm:
        for _ in range(20):
            assert "".join([d async for d in llm.astream(messages)]) == "echo: stream this reply"
        for _ in range(20):
            assert "".join(llm.stream(messages)) == "echo: stream this reply"
    assert upstream.requests_served == 40
    assert upstream.connections_accepted == 2  # one async, one sync


async def test_idle_connections_beyond_max_keepalive_are_closed_after_a_burst(
    upstream: UpstreamServer, transport: str,
) -> None:
    if transport == "pyreqwest":
        pytest.skip("hyper cannot close surplus idle connections: they last keepalive_expiry")
    upstream.delay = 0.05
    async with embedder(upstream, transport, max_keepalive_connections=2) as provider:
        await asyncio.gather(*(provider.aembed([f"t{i}"]) for i in range(10)))
        assert upstream.connections_accepted == 10
        assert await eventually(lambda: client(provider, "async").idle == 2)
        assert await eventually(lambda: upstream.connections_open == 2)
        assert client(provider, "async").stats.connections_closed == {"client": 8}
