"""rag-llm's metrics follow Prometheus conventions: found in the registry the application
serves, counters that never go down, gauges only for pools still open; and every view of a
provider (``pool_stats()``, ``/health``) shows every endpoint's pool and the health checks'."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import KEY, provider_config

from rag_llm.api import create_app
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.metrics import render_metrics
from rag_llm.providers import create_provider
from rag_llm.testing import UpstreamServer

SRC = Path(__file__).resolve().parents[1] / "src"


def samples(text: str, name: str, **labels: str) -> list[float]:
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


@pytest.fixture
def two() -> Iterator[list[UpstreamServer]]:
    with UpstreamServer() as a, UpstreamServer() as b:
        yield [a, b]


def two_endpoints(servers: list[UpstreamServer], **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": "openai", "model": "text-embedding-3-small", "api_key": KEY,
        "endpoints": [{"base_url": s.base_url} for s in servers],
        "load_balancer": "round_robin", "retry": False, "circuit_breaker": False,
    }
    config.update(overrides)
    return config


def test_the_default_registry_has_the_request_counter_after_a_call(
        upstream: UpstreamServer) -> None:
    with create_provider("embedding", provider_config(upstream, name="in-default")) as p:
        p.embed(["x"])
        text = generate_latest(REGISTRY).decode()
    assert samples(text, "rag_llm_requests_total", provider="in-default", client="sync",
                   operation="embeddings", outcome="200") == [1]
    assert KEY not in text


HANDED_OVER = """
import json, sys
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from rag_llm.metrics import register
from rag_llm.providers import create_provider

mine = CollectorRegistry()
if sys.argv[2] == "before":
    register(mine)
provider = create_provider("embedding", {"type": "openai", "model": "m", "api_key": "k",
    "base_url": sys.argv[1], "name": "handed", "retry": False, "circuit_breaker": False})
if sys.argv[2] == "after":
    register(mine)
register(mine)  # idempotent
provider.embed(["x"])
provider.close()
print(json.dumps({"mine": generate_latest(mine).decode(),
                  "default": generate_latest(REGISTRY).decode()}))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_registry_handed_over_receives_the_metrics_instead_of_the_default(
        upstream: UpstreamServer, when: str) -> None:
    # A process of its own: which registry holds the collectors is process-wide state.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
        "PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", HANDED_OVER,
                           upstream.base_url, when],
                          capture_output=True, text=True, timeout=60, env=env, check=True)
    out = json.loads(done.stdout.splitlines()[-1])  # events are logged before it
    assert samples(out["mine"], "rag_llm_requests_total", provider="handed",
                   outcome="200") == [1]
    assert "rag_llm_" not in out["default"]
    assert "python_info" in out["default"]  # the default registry itself is untouched


def _requests(name: str) -> list[float]:
    return samples(render_metrics().decode(), "rag_llm_requests_total", provider=name,
                   client="sync", operation="embeddings", outcome="200")


def test_counters_go_on_after_a_provider_is_closed_and_rebuilt(
        upstream: UpstreamServer) -> None:
    config = provider_config(upstream, name="rebuilt")
    provider = create_provider("embedding", config)
    for _ in range(3):
        provider.embed(["x"])
    provider.close()
    del provider
    gc.collect()  # the closed pool and router are gone: their counts are kept apart
    assert _requests("rebuilt") == [3]
    text = render_metrics().decode()
    # Gauges of a closed pool are gone, counters stay.
    assert samples(text, "rag_llm_pool_connections", provider="rebuilt") == []
    assert samples(text, "rag_llm_pool_max_connections", provider="rebuilt") == []
    assert samples(text, "rag_llm_connections_closed_total", provider="rebuilt",
                   client="sync", reason="shutdown") == [1]
    assert samples(text, "rag_llm_endpoint_attempts_total", provider="rebuilt",
                   outcome="ok") == [3]
    with create_provider("embedding", config) as again:
        again.embed(["y"])
        assert _requests("rebuilt") == [4]
        text = render_metrics().decode()
        assert samples(text, "rag_llm_connections_opened_total", provider="rebuilt",
                       client="sync") == [2]
        assert samples(text, "rag_llm_endpoint_attempts_total", provider="rebuilt",
                       outcome="ok") == [4]
        assert samples(text, "rag_llm_pool_connections", provider="rebuilt", client="sync",
                       state="idle") == [1]
    del again
    gc.collect()
    assert _requests("rebuilt") == [4]


def test_pool_stats_sum_every_endpoint(two: list[UpstreamServer]) -> None:
    with create_provider("embedding", two_endpoints(two, name="spread")) as provider:
        for i in range(4):
            provider.embed([f"t{i}"])
        merged = provider.pool_stats()
        each = provider.pools_stats()
        names = list(provider.router.upstreams)
    assert len(set(names)) == 2
    assert [(s.endpoint, s.role) for s in each] == [(n, "traffic") for n in names]
    assert [s.provider for s in each] == ["spread", "spread"]
    sync = next(c for c in merged.clients if c.client == "sync")
    assert sync.stats.connections_opened == 2 == sum(s.connections_accepted for s in two)
    assert sync.idle == 2
    assert sync.stats.requests_total == 4
    assert merged.state == "open"


def test_health_shows_every_endpoint_and_the_probe_pools(two: list[UpstreamServer]) -> None:
    config = two_endpoints(two, health_check={"path": "models", "interval": 0.05,
                                              "timeout": 1.0})
    locator = ServiceLocator(Settings(providers={"embedding": config}))
    with TestClient(create_app(locator)) as client:
        provider = locator.get("embedding")
        for i in range(4):
            provider.embed([f"t{i}"])
        deadline = time.monotonic() + 5
        while sum(r.path == "/v1/models" for s in two for r in s.requests) < 2 and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        body = client.get("/health").json()["providers"]["embedding"]
        stats = provider.pools_stats()
        names = list(provider.router.upstreams)
    pools = {(p["endpoint"], p["role"]): p for p in body["pools"]}
    assert len(pools) == len(body["pools"]) == 4
    assert set(pools) == {(n, role) for n in names for role in ("traffic", "probe")}
    for endpoint in names:
        sync = pools[(endpoint, "traffic")]["clients"][0]
        assert (sync["client"], sync["connections_opened"]) == ("sync", 1)
        assert pools[(endpoint, "probe")]["clients"][0]["connections_opened"] == 1
    # The provider's own figures are its calls' pools, summed: every endpoint's.
    assert body["state"] == "open"
    assert body["clients"][0]["connections_opened"] == 2
    assert [(s.provider, s.endpoint, s.role) for s in stats] == [
        *(("openai", n, "traffic") for n in names),
        *(("openai-health", n, "probe") for n in names)]
    assert KEY not in json.dumps(body)
