"""adaptive_concurrency: a provider backs off when the upstream saturates, over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import provider_config

from rag_llm.errors import ServerError
from rag_llm.metrics import render_metrics
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import UpstreamServer


def embedder(server: UpstreamServer, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding", provider_config(server, **overrides))


async def _overload(provider: EmbeddingProvider, workers: int, calls: int) -> int:
    """Run ``calls`` calls from ``workers`` workers; how many the upstream refused."""
    remaining = iter(range(calls))
    refused = 0

    async def worker() -> None:
        nonlocal refused
        for i in remaining:
            try:
                await provider.aembed([f"t{i}"])
            except ServerError:
                refused += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return refused


def _limit(provider: EmbeddingProvider) -> int | None:
    return next(c.stats.concurrency_limit for c in provider.pool_stats().clients
                if c.client == "async")


async def test_the_limit_follows_the_upstreams_capacity(upstream: UpstreamServer) -> None:
    upstream.capacity = 4
    upstream.delay = 0.01
    async with embedder(upstream, name="fixed") as fixed:
        refused_fixed = await _overload(fixed, workers=32, calls=320)
    async with embedder(upstream, name="adaptive", adaptive_concurrency=True) as adaptive:
        await _overload(adaptive, workers=32, calls=320)  # the limit comes down from 20
        refused_adaptive = await _overload(adaptive, workers=32, calls=320)
        backed_off = _limit(adaptive)
        text = render_metrics().decode()
        upstream.capacity = None  # the upstream recovers: the limit grows back
        await _overload(adaptive, workers=32, calls=320)
        recovered = _limit(adaptive)
    assert refused_fixed > 200  # 32 callers against room for 4: most are refused
    # About 0.28 of fixed's refusals on a quiet machine, 0.34 under a loaded test run.
    assert refused_adaptive < refused_fixed / 2, (refused_adaptive, refused_fixed)
    assert backed_off is not None
    assert backed_off < 20  # below its starting point, max_keepalive_connections
    assert recovered is not None
    assert recovered > backed_off
    gauges = [s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "rag_llm_concurrency_limit" and s.labels["provider"] == "adaptive"]
    assert gauges == [backed_off]


async def test_waiting_at_the_adaptive_gate_is_bounded_by_pool_timeout(
    upstream: UpstreamServer,
) -> None:
    upstream.delay = 0.5
    async with embedder(upstream, adaptive_concurrency=True, max_connections=1,
                        max_keepalive_connections=1, pool_timeout=0.1) as provider:
        results = await asyncio.gather(*(provider.aembed([f"t{i}"]) for i in range(2)),
                                       return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert "pool_timeout=0.1s" in str(failures[0])


def _overload_from_threads(provider: EmbeddingProvider, workers: int, calls: int) -> int:
    """``_overload`` for the sync client: ``workers`` threads; how many calls were refused."""
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> bool:
        try:
            provider.embed([f"t{i}"])
        except ServerError:
            return True
        return False

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(call, range(calls)))


def test_sync_calls_back_off_too(upstream: UpstreamServer) -> None:
    upstream.capacity = 4
    upstream.delay = 0.01
    with embedder(upstream) as fixed:
        refused_fixed = _overload_from_threads(fixed, workers=16, calls=240)
    with embedder(upstream, adaptive_concurrency=True) as adaptive:
        _overload_from_threads(adaptive, workers=16, calls=240)
        refused_adaptive = _overload_from_threads(adaptive, workers=16, calls=240)
        limit = next(c.stats.concurrency_limit for c in adaptive.pool_stats().clients
                     if c.client == "sync")
    assert limit is not None
    assert limit < 20
    assert refused_adaptive < refused_fixed / 2, (refused_adaptive, refused_fixed)


def test_threads_wait_at_the_gate_no_longer_than_pool_timeout(upstream: UpstreamServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    upstream.delay = 0.5
    with embedder(upstream, adaptive_concurrency=True, max_connections=1,
                  max_keepalive_connections=1, pool_timeout=0.1) as provider, \
            ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(provider.embed, [f"t{i}"]) for i in range(2)]
        failures = [f.exception() for f in futures if f.exception() is not None]
    assert len(failures) == 1
    assert "pool_timeout=0.1s" in str(failures[0])
