"""Prometheus metrics agree with the server's own counts and carry no secret."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client.parser import text_string_to_metric_families
from support import KEY, provider_config

from rag_llm.api.observability import pool_readiness
from rag_llm.errors import ServerError
from rag_llm.metrics import render_metrics
from rag_llm.providers import create_provider
from rag_llm.testing import Fault, UpstreamServer


def samples(text: str, name: str, **labels: str) -> list[float]:
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


async def test_metrics_match_the_server_counts(upstream: UpstreamServer) -> None:
    config = provider_config(upstream, name="metrics-emb", transport="aiohttp")
    async with create_provider("embedding", config) as provider:
        semaphore = asyncio.Semaphore(8)

        async def call(i: int) -> None:
            async with semaphore:
                await provider.aembed([f"t{i}"])

        await asyncio.gather(*(call(i) for i in range(240)))
        text = render_metrics().decode()
        open_now = upstream.connections_open
    labels = {"provider": "metrics-emb", "client": "async"}
    assert samples(text, "rag_llm_connections_opened_total", **labels) == [
        upstream.connections_accepted]
    assert samples(text, "rag_llm_requests_total", **labels, operation="embeddings",
                   outcome="200") == [upstream.requests_served]
    assert samples(text, "rag_llm_request_duration_seconds_count", **labels,
                   operation="embeddings") == [240]
    assert samples(text, "rag_llm_pool_connections", **labels, state="idle") == [open_now]
    assert samples(text, "rag_llm_pool_max_connections", provider="metrics-emb") == [100]


async def test_metrics_parse_and_no_label_holds_a_secret(upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(status=500, body={"error": {"message": f"bad key {KEY}"}}))
    config = provider_config(upstream, name="secretive")
    async with create_provider("embedding", config) as provider:
        with contextlib.suppress(ServerError):
            await provider.aembed(["x"])
        provider.embed(["y"])
    text = render_metrics().decode()  # after close: the shutdown closes are counted
    families = list(text_string_to_metric_families(text))
    assert {f.name for f in families} >= {
        "rag_llm_connections_opened", "rag_llm_connections_closed", "rag_llm_pool_connections",
        "rag_llm_pool_wait_seconds", "rag_llm_request_duration_seconds", "rag_llm_requests"}
    assert KEY not in text
    for family in families:
        for sample in family.samples:
            for value in sample.labels.values():
                assert "sk-" not in value
                assert "://" not in value
    assert samples(text, "rag_llm_request_errors_total", provider="secretive",
                   error="ServerError") == [1]
    assert samples(text, "rag_llm_connections_closed_total", provider="secretive",
                   client="sync", reason="shutdown") == [1]


async def test_readiness_reports_saturated_and_failing_pools(upstream: UpstreamServer) -> None:
    upstream.delay = 0.3
    config = provider_config(upstream, max_connections=1, max_keepalive_connections=1)
    async with create_provider("embedding", config) as provider:
        assert pool_readiness(provider.pool_stats())["ready"]
        calls = [asyncio.create_task(provider.aembed([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0.1)
        busy = pool_readiness(provider.pool_stats())
        await asyncio.gather(*calls)
        assert pool_readiness(provider.pool_stats())["ready"]
        upstream.delay = 0
        upstream.add_fault(Fault(status=503))
        with contextlib.suppress(ServerError):
            await provider.aembed(["fails"])
        failing = pool_readiness(provider.pool_stats())
        later = pool_readiness(provider.pool_stats(), now=time.time() + 60)
    assert not busy["ready"]
    assert busy["problems"][0].startswith("saturated")
    assert (busy["active"], busy["waiting"]) == (1, 2)
    assert not failing["ready"]
    assert "503" in failing["last_error"]
    assert later["ready"]
