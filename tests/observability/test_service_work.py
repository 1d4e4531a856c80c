"""The service's own work in /metrics and on the dashboard, with an in-process embedder and
no HTTP pool at all: what the embedded default runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dashkit import AppServer
from fastapi.testclient import TestClient

from rag_llm.api import create_app
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagService, RagSettings, SQLiteStore

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"


class HashModel:
    """A deterministic in-process embedder: no pool, no model file."""

    name = "hash"
    model = "hash-16"

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()[:16]
        raw = [b - 127.5 for b in digest]
        norm = math.sqrt(sum(x * x for x in raw))
        return [x / norm for x in raw]

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        return [self._vector(t) for t in ([texts] if isinstance(texts, str) else texts)]

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
        return self.embed(texts)

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RagService]:
    settings = RagSettings(data_dir=tmp_path / "data")
    with RagService(settings, HashModel(), None, SQLiteStore(settings.data_dir)) as rag:
        yield rag


def _samples(text: str, name: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def test_metrics_count_embedder_calls_queries_and_the_store(service: RagService) -> None:
    locator = ServiceLocator(Settings())
    with TestClient(create_app(locator, rag=service)) as client:
        before = client.get("/metrics").text
        files = [("files", (p.name, p.read_bytes())) for p in sorted(SAMPLES.iterdir())]
        assert client.post("/v1/documents", files=files).status_code == 200
        for question in ("espresso pressure", "bees", "tide pools"):
            assert client.post("/v1/query", json={"question": question}).status_code == 200
        after = client.get("/metrics").text
        frame = client.get("/dashboard/data").json()
    label = '{embedder="hash/hash-16",where="local"}'
    calls = _samples(after, "rag_llm_embed_calls_total")[f"rag_llm_embed_calls_total{label}"]
    calls_before = _samples(before, "rag_llm_embed_calls_total").get(
        f"rag_llm_embed_calls_total{label}", 0.0)
    chunks = service.store.chunk_count()
    # One call per ingest batch of up to 64 chunks, and one per question.
    assert calls - calls_before == math.ceil(chunks / 64) + 3
    texts = _samples(after, "rag_llm_embed_texts_total")[f"rag_llm_embed_texts_total{label}"]
    assert texts - _samples(before, "rag_llm_embed_texts_total").get(
        f"rag_llm_embed_texts_total{label}", 0.0) == chunks + 3
    queries = _samples(after, "rag_llm_queries_total")
    assert queries['rag_llm_queries_total{mode="extractive"}'] >= 3
    assert _samples(after, "rag_llm_documents") == {"rag_llm_documents": len(files)}
    assert _samples(after, "rag_llm_chunks") == {"rag_llm_chunks": chunks}
    assert 'rag_llm_query_retrieval_seconds_count' in after
    assert frame["work"]["documents"] == len(files)
    assert frame["work"]["chunks"] == chunks
    [embedder] = [e for e in frame["work"]["embedders"] if e["embedder"] == "hash/hash-16"]
    assert embedder["where"] == "local"
    assert embedder["calls"] == calls
    assert frame["work"]["queries"]["by_mode"]["extractive"] >= 3
    # No pool of this service (earlier tests' closed ones may still be listed): the work is
    # shown all the same.
    assert [p for p in frame["providers"] if p["state"] != "closed"] == []


def test_the_dashboard_shows_the_service_work_without_any_pool(service: RagService) -> None:
    from test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, unavailable

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)")
    app = create_app(ServiceLocator(Settings()), rag=service)
    stop = threading.Event()
    with AppServer(app) as server:
        def ask() -> None:
            while not stop.is_set():
                request = urllib.request.Request(
                    f"{server.url}/v1/query", data=json.dumps({"question": "bees"}).encode(),
                    headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                stop.wait(0.05)

        import asyncio

        asyncio.run(service.ingest_paths([SAMPLES]))
        asker = threading.Thread(target=ask)
        asker.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 900})
                    errors: list[str] = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(f"{server.url}/dashboard")
                    page.wait_for_function(
                        "() => window.ragDashboard && ragDashboard.work &&"
                        " ragDashboard.work.queryRate > 0", timeout=20_000)
                    work: dict[str, Any] = page.evaluate("() => ragDashboard.work")
                    card = page.inner_text("article[data-work='service']")
                    empty = page.inner_text("#empty")
                finally:
                    browser.close()
        finally:
            stop.set()
            asker.join()
    assert errors == []
    assert work["documents"] == len(service.store.documents())
    assert work["chunks"] == service.store.chunk_count()
    assert work["embedRate"] > 0
    assert work["retrievalMs"] > 0
    assert "hash/hash-16 (local)" in card
    assert f"{work['chunks']:,} chunks" in card
    assert "runs in process" in empty
