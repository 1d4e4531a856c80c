"""``rag-llm serve --workers N``: real worker processes on a real socket, one service."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ragkit import SAMPLES
from statekit import RedisServer
from support import closed_port

from rag_llm.testing import UpstreamServer

WORKERS = 4
QUERIES = 40


def _write_config(tmp_path: Path, embeddings: UpstreamServer, chat: UpstreamServer,
                  embedding_extra: str = "", extra: str = "") -> Path:
    path = tmp_path / "rag-llm.toml"
    path.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "m"\n'
        f'base_url = "{embeddings.base_url}"\nname = "emb"\nmax_connections = 7\n'
        f'{embedding_extra}'
        f'[providers.llm]\ntype = "openai"\nmodel = "c"\nbase_url = "{chat.base_url}"\n'
        f'name = "chat"\n'
        f'[rag]\ndata_dir = "{tmp_path / "data"}"\n{extra}')
    return path


@pytest.fixture
def config(upstream: UpstreamServer, tmp_path: Path) -> Path:
    return _write_config(tmp_path, upstream, upstream)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _query(base: str, question: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/v1/query", data=json.dumps({"question": question}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def _requests_total(text: str) -> dict[tuple[str, ...], float]:
    """``rag_llm_requests_total`` by (provider, operation, outcome), summed over clients."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "rag_llm_requests":
            for sample in family.samples:
                key = (sample.labels["provider"], sample.labels["operation"],
                       sample.labels["outcome"])
                found[key] = found.get(key, 0.0) + sample.value
    return found


def _gauge(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == name
               for s in f.samples)


@pytest.fixture
def service(config: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """``serve --workers 4 --ingest samples/corpus``, up and answering; its base URL, the
    process, and the temporary folder its workers' snapshots go under."""
    with _serving(config, tmp_path) as served:
        yield served


@contextlib.contextmanager
def _serving(config: Path,
             tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    port = closed_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    env["TMPDIR"] = str(temp)
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port), "--config",
         str(config), "--workers", str(WORKERS), "--ingest", str(SAMPLES)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = json.loads(_get(f"{base}/health"))
                if health.get("workers", {}).get("count") == WORKERS:
                    break
            except OSError:
                assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the workers did not all start"
            time.sleep(0.2)
        yield base, process, temp
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)


def test_metrics_add_up_every_worker_to_what_the_upstream_received(
    service: tuple[str, subprocess.Popen[str], Path], upstream: UpstreamServer,
) -> None:
    base, process, temp = service
    before = upstream.requests_served  # the parent's ingest, before any worker served
    assert _requests_total(_get(f"{base}/metrics").decode()) == {}

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _query(base, f"espresso {i}"), range(QUERIES)))
    assert all(a["mode"] == "generated" for a in answers)
    sent = upstream.requests_served - before
    assert sent == 2 * QUERIES  # one embedding and one chat call each

    # Each worker's figures reach the others within a snapshot interval (0.5 s).
    deadline = time.monotonic() + 10
    while sum(_requests_total(_get(f"{base}/metrics").decode()).values()) != sent:
        assert time.monotonic() < deadline, _get(f"{base}/metrics").decode()
        time.sleep(0.2)
    scrapes = [_get(f"{base}/metrics").decode() for _ in range(12)]
    totals = [_requests_total(text) for text in scrapes]
    assert all(t == totals[0] for t in totals), totals
    assert totals[0] == {("emb", "embeddings", "200"): QUERIES,
                         ("chat", "chat", "200"): QUERIES}
    assert {_gauge(text, "rag_llm_workers") for text in scrapes} == {WORKERS}
    # A configured limit is each worker's (7 and 100), not their sum.
    assert {_gauge(text, "rag_llm_pool_max_connections") for text in scrapes} == {7 + 100}

    # The calls really were spread over the workers: each snapshot holds its own share.
    (directory,) = temp.glob("rag-llm-workers-*")
    shares = {}
    for path in directory.glob("*.json"):
        own = json.loads(path.read_text())
        requests = [s for f in own["metrics"] if f["name"] == "rag_llm_requests"
                    for s in f["samples"]]
        shares[own["pid"]] = sum(value for _, _, value in requests)
    assert len(shares) == WORKERS
    assert sum(shares.values()) == sent
    assert sum(1 for n in shares.values() if n) >= 2, shares

    health = json.loads(_get(f"{base}/health"))
    assert sorted(health["workers"]["pids"]) == sorted(shares)
    assert set(health["providers"]) == {"embedding", "llm"}
    assert health["providers"]["embedding"]["max_connections"] == 7
    frame = json.loads(_get(f"{base}/dashboard/data"))
    assert frame["workers"] == health["workers"]
    clients = {p["provider"]: sum(c["requests"] for c in p["clients"])
               for p in frame["providers"]}
    assert clients == {"emb": QUERIES, "chat": QUERIES}

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM)
    assert "limits hold per worker: 4 workers each allow max_connections=7 (embedding), " \
           "max_connections=100 (llm); configure [state] url for shared limits" in stderr
    assert f"with {WORKERS} workers" in stderr
    assert not directory.exists()  # the parent removes the workers' snapshots at exit


@pytest.mark.timeout(120)
def test_with_redis_the_workers_share_one_in_flight_cap_and_count_every_request(
    upstream: UpstreamServer, redis_server: RedisServer, prefix: str, tmp_path: Path,
) -> None:
    cap = 3
    with UpstreamServer() as chat:
        # A generous Redis timeout: on a loaded host the local fallback (each worker's own
        # cap) would stand in, and the shared cap is what is under test.
        config = _write_config(
            tmp_path, upstream, chat, embedding_extra=f"global_max_in_flight = {cap}\n",
            extra=f'[state]\nurl = "{redis_server.url}"\nprefix = "{prefix}"\ntimeout = 1.0\n')
        with _serving(config, tmp_path) as (base, process, _):
            upstream.delay = 0.05  # the workers' embedding calls overlap
            upstream.reset()  # what the parent's ingest sent is left out
            before = upstream.requests_served
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(lambda i: _query(base, f"espresso {i}"),
                                        range(QUERIES)))
            assert all(a["mode"] == "generated" for a in answers)
            sent = upstream.requests_served - before
            assert (sent, chat.requests_served) == (QUERIES, QUERIES)
            # Twelve queries at once over four workers, and never more than the cap in
            # flight at the embedding upstream: the workers shared it through Redis.
            assert upstream.max_in_flight == cap

            deadline = time.monotonic() + 10
            while sum(_requests_total(_get(f"{base}/metrics").decode()).values()) != 2 * sent:
                assert time.monotonic() < deadline, _get(f"{base}/metrics").decode()
                time.sleep(0.2)
            text = _get(f"{base}/metrics").decode()
            assert _requests_total(text) == {("emb", "embeddings", "200"): QUERIES,
                                             ("chat", "chat", "200"): QUERIES}
            assert _gauge(text, "rag_llm_workers") == WORKERS
            assert _gauge(text, "rag_llm_state_errors_total") == 0
            assert _gauge(text, "rag_llm_state_fallbacks_total") == 0
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM)
    assert f"with {WORKERS} workers" in stderr
    assert "limits hold per worker" not in stderr
