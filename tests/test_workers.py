"""How several workers' figures add up, and when serve warns that limits are per worker."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from rag_llm.cli import _shared_state
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.metrics import render_families
from rag_llm.rag import resolve_settings
from rag_llm.workers import merge_families


def _family(name: str, kind: str, *samples: tuple[str, dict[str, str], float]) -> dict[str, Any]:
    return {"name": name, "type": kind, "documentation": name, "samples": list(samples)}


def test_counters_add_up_over_every_worker_and_gauges_over_the_running_ones() -> None:
    def worker(requests: float, held: float, limit: float) -> list[dict[str, Any]]:
        return [_family("rag_llm_requests", "counter",
                        ("rag_llm_requests_total", {"provider": "p"}, requests)),
                _family("rag_llm_pool_connections", "gauge",
                        ("rag_llm_pool_connections", {"provider": "p"}, held)),
                _family("rag_llm_pool_max_connections", "gauge",
                        ("rag_llm_pool_max_connections", {"provider": "p"}, limit))]

    merged = merge_families([(True, worker(3, 2, 10)), (True, worker(4, 1, 12)),
                             (False, worker(5, 7, 99))])
    text = render_families(merged).decode()
    assert 'rag_llm_requests_total{provider="p"} 12.0' in text
    assert 'rag_llm_pool_connections{provider="p"} 3.0' in text
    assert 'rag_llm_pool_max_connections{provider="p"} 12.0' in text


def test_the_store_size_is_the_one_store_every_worker_serves_not_a_sum() -> None:
    def worker(documents: float, queries: float) -> list[dict[str, Any]]:
        return [_family("rag_llm_documents", "gauge", ("rag_llm_documents", {}, documents)),
                _family("rag_llm_queries", "counter",
                        ("rag_llm_queries_total", {"mode": "extractive"}, queries))]

    text = render_families(merge_families([(True, worker(7, 2)), (True, worker(8, 3))])).decode()
    assert "rag_llm_documents 8.0" in text  # the later reading of the one store
    assert 'rag_llm_queries_total{mode="extractive"} 5.0' in text


def test_histograms_add_up_bucket_by_bucket() -> None:
    def worker(below: float, total: float) -> list[dict[str, Any]]:
        return [_family("rag_llm_connect_seconds", "histogram",
                        ("rag_llm_connect_seconds_bucket", {"le": "0.1"}, below),
                        ("rag_llm_connect_seconds_bucket", {"le": "+Inf"}, total),
                        ("rag_llm_connect_seconds_count", {}, total),
                        ("rag_llm_connect_seconds_sum", {}, total / 10))]

    text = render_families(merge_families([(True, worker(1, 2)), (False, worker(3, 3))])).decode()
    assert 'rag_llm_connect_seconds_bucket{le="0.1"} 4.0' in text
    assert 'rag_llm_connect_seconds_bucket{le="+Inf"} 5.0' in text
    assert "rag_llm_connect_seconds_count 5.0" in text


@pytest.mark.parametrize(("table", "variable", "shared"), [
    ("", None, False),
    ('[state]\nurl = "redis://127.0.0.1:6379/0"\n', None, True),
    ("", "redis://127.0.0.1:6379/0", True),
])
def test_shared_state_is_a_state_url_in_the_file_or_the_environment(
    tmp_path: Path, table: str, variable: str | None, shared: bool,
) -> None:
    config = tmp_path / "rag-llm.toml"
    config.write_text(table + '[providers.embedding]\ntype = "openai"\nmodel = "m"\n'
                              'base_url = "http://127.0.0.1:9/v1"\n')
    environ = {} if variable is None else {"RAG_LLM_STATE__URL": variable}
    # As the CLI builds them: the service's defaults filled in, [state] kept for them too.
    locator = ServiceLocator(resolve_settings(Settings.load(config, environ=environ), environ))
    try:
        locator.build_all()
        assert _shared_state(locator) is shared
    finally:
        asyncio.run(locator.cleanup())


def test_a_later_answer_by_another_worker_counts_at_least_what_one_reported(
        tmp_path: Path) -> None:
    # Two workers of one service (this process and its parent, both running). Each answers
    # /metrics with its own figures live and the other's last snapshot; had the first not
    # written its snapshot before answering, the second's answer would count less, and a
    # Prometheus scrape answered by it would read a counter reset.
    from rag_llm import create_provider
    from rag_llm.testing import UpstreamServer
    from rag_llm.workers import WorkerSet

    def requests(exposition: bytes) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        return sum(s.value for f in text_string_to_metric_families(exposition.decode())
                   for s in f.samples
                   if s.name == "rag_llm_requests_total" and s.labels["provider"] == "scrape")

    first = WorkerSet(tmp_path, dict, pid=os.getpid())
    second = WorkerSet(tmp_path, dict, pid=os.getppid())
    with UpstreamServer() as upstream, create_provider("embedding", {
            "type": "openai_compatible", "name": "scrape", "model": "m",
            "base_url": upstream.base_url}) as provider:
        first.write()  # a snapshot from before the request
        provider.embed("x")
        second.write()
        # In one process both workers' live figures are the same: one request each.
        reported = requests(first.render_metrics())
        later = requests(second.render_metrics())
    assert reported == 2  # its own request, live, and the second's snapshot of it
    assert later >= reported, (reported, later)
