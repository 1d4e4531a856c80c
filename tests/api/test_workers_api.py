"""One worker of several: /metrics, /health and the dashboard add up every worker's snapshot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import provider_config

from rag_llm.api import create_app
from rag_llm.api.observability import provider_pools
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.observability.top import render_frame
from rag_llm.rag import RagSettings
from rag_llm.testing import UpstreamServer
from rag_llm.workers import WORKER_DIR_ENV, WorkerSet

# A process that is running for as long as the test: the worker "next door".
NEIGHBOUR = os.getppid()


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


def _calls(locator: ServiceLocator, n: int) -> None:
    for _ in range(n):
        locator.get("embedding").embed(["espresso"])


@pytest.fixture
def locator(upstream: UpstreamServer) -> ServiceLocator:
    return ServiceLocator(Settings(providers={
        "embedding": provider_config(upstream, name="emb", max_connections=9),
        "llm": provider_config(upstream, name="chat", model="gpt-4o-mini")}))


def test_every_figure_is_the_sum_of_the_running_workers(
    locator: ServiceLocator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = tmp_path / "workers"
    directory.mkdir()
    monkeypatch.setenv(WORKER_DIR_ENV, str(directory))
    app = create_app(locator, rag_settings=RagSettings(data_dir=tmp_path / "data"))
    with TestClient(app) as client:
        _calls(locator, 3)
        # The worker next door has served the same calls (a copy of this one's figures),
        # and one that has exited had served them too.
        twin = WorkerSet(directory, lambda: provider_pools(locator.providers()),
                         pid=NEIGHBOUR)
        twin.write()
        gone = WorkerSet(directory, lambda: provider_pools(locator.providers()), pid=2**22 + 1)
        gone.write(final=True)

        text = client.get("/metrics").text
        requests = _samples(text, "rag_llm_requests_total")
        assert requests[(("client", "sync"), ("operation", "embeddings"),
                         ("outcome", "200"), ("provider", "emb"))] == 3 * 3
        assert _samples(text, "rag_llm_workers") == {(): 2}
        # Limits are each worker's; gauges of the exited worker count no more.
        assert _samples(text, "rag_llm_pool_max_connections")[(("provider", "emb"),)] == 9
        idle = _samples(text, "rag_llm_pool_connections")
        own = _samples(client.get("/metrics").text, "rag_llm_pool_connections")
        assert idle == own  # stable between scrapes
        alone = WorkerSet(tmp_path, lambda: provider_pools(locator.providers()))
        mine = _samples(alone.render_metrics().decode(), "rag_llm_pool_connections")
        assert {k: 2 * v for k, v in mine.items()} == idle

        health = client.get("/health").json()
        assert health["workers"] == {"count": 2, "pids": sorted([os.getpid(), NEIGHBOUR])}
        embedding = health["providers"]["embedding"]
        assert embedding["max_connections"] == 9
        assert len(embedding["pools"]) == 1  # one endpoint: the workers' pools summed
        opened = embedding["clients"][0]["connections_opened"]
        assert opened == 2 * provider_pools(locator.providers())["embedding"][0] \
            .clients[0].stats.connections_opened
        # Readiness is the answering worker's own: each holds its own limits.
        assert "workers" not in client.get("/health/ready").json()

        frame = client.get("/dashboard/data").json()
        assert frame["workers"] == health["workers"]
        by_provider = {p["provider"]: p for p in frame["providers"]}
        assert sum(c["requests"] for c in by_provider["emb"]["clients"]) == 2 * 3
        with client.stream("GET", "/dashboard/events") as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["workers"]["count"] == 2
                    break
    # At exit the worker leaves its last counters for the others, marked final.
    final = json.loads((directory / f"{os.getpid()}.json").read_text())
    assert final["final"] is True
    assert any(f["name"] == "rag_llm_requests" and f["samples"] for f in final["metrics"])


def test_a_single_process_keeps_its_shape(
    locator: ServiceLocator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(WORKER_DIR_ENV, raising=False)
    app = create_app(locator, rag_settings=RagSettings(data_dir=tmp_path / "data"))
    with TestClient(app) as client:
        _calls(locator, 1)
        assert set(client.get("/health").json()) == {"status", "providers"}
        assert set(client.get("/dashboard/data").json()) == {"version", "time", "providers", "work"}
        assert "rag_llm_workers" not in client.get("/metrics").text


def test_top_says_how_many_workers_it_adds_up() -> None:
    from rich.console import Console

    frame: dict[str, Any] = {"time": 0.0, "providers": [],
                             "workers": {"count": 2, "pids": [11, 12]}}
    console = Console(record=True, width=100)
    console.print(render_frame(frame, None, "http://x"))
    assert "2 workers, figures summed (pids 11, 12)" in console.export_text()
