"""The dashboard's routes over a real uvicorn server: page, assets, JSON frame, event stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from dashkit import AppServer, Traffic, dashboard_app
from support import provider_config

from rag_llm.api.dashboard.feed import work_frame
from rag_llm.metrics import collect_metrics, collect_work_metrics
from rag_llm.pool import PoolSnapshot
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import UpstreamServer


@pytest.fixture
def provider(upstream: UpstreamServer) -> Iterator[EmbeddingProvider]:
    with create_provider("embedding", provider_config(upstream, name="stream-emb")) as p:
        for _ in range(5):
            p.embed(["warm"])
        yield p


class CountingSource:
    """The provider's snapshots, counting how often the server asked for them."""

    def __init__(self, provider: EmbeddingProvider) -> None:
        self.provider = provider
        self.calls = 0

    def __call__(self) -> list[PoolSnapshot]:
        self.calls += 1
        return [self.provider.pool_stats()]


def events(response: httpx2.Response) -> Iterator[tuple[str, str]]:
    """(field, value) of each line of an event stream, blank lines skipped."""
    for line in response.iter_lines():
        if line:
            field, _, value = line.partition(": ")
            yield field, value


def frames_of(response: httpx2.Response) -> Iterator[dict[str, Any]]:
    for field, value in events(response):
        if field == "data":
            yield json.loads(value)


def test_page_assets_and_data_are_served_by_the_app(provider: EmbeddingProvider) -> None:
    with AppServer(dashboard_app(CountingSource(provider))) as server, \
            httpx2.Client(base_url=server.url) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        for src in ("dashboard/static/uPlot.iife.min.js", "dashboard/static/dashboard.js",
                    "dashboard/static/uPlot.min.css", "dashboard/static/dashboard.css"):
            assert src in page.text
            asset = client.get(f"/{src}")
            assert asset.status_code == 200, src
            assert asset.content
        assert "://" not in page.text, "the page must load nothing from another origin"
        assert client.get("/dashboard/static/uPlot.LICENSE").text.startswith("The MIT License")
        assert client.get("/dashboard/static/page.py").status_code == 404
        assert client.get("/dashboard/static/..%2Fpage.py").status_code == 404
        data = client.get("/dashboard/data")
    assert data.status_code == 200
    assert data.headers["cache-control"] == "no-store"
    [provider_frame] = data.json()["providers"]
    assert provider_frame["provider"] == "stream-emb"
    sync = provider_frame["clients"][0]
    assert (sync["client"], sync["requests"], sync["idle"]) == ("sync", 5, 1)


def test_events_stream_a_frame_per_interval_and_end_after_their_lifetime(
    provider: EmbeddingProvider,
) -> None:
    app = dashboard_app(CountingSource(provider), interval=0.1, stream_lifetime=0.55)
    with AppServer(app) as server, httpx2.Client(base_url=server.url, timeout=5) as client:
        started = time.monotonic()
        with client.stream("GET", "/dashboard/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = list(events(response))
        took = time.monotonic() - started
    assert lines[0] == ("retry", "250")
    frames = [json.loads(value) for field, value in lines if field == "data"]
    assert 4 <= len(frames) <= 7
    assert 0.4 <= took < 2.0
    times = [frame["time"] for frame in frames]
    assert times == sorted(times)
    assert all(f["providers"][0]["clients"][0]["requests"] == 5 for f in frames)


def test_the_work_figures_come_from_the_work_families_alone(provider: EmbeddingProvider) -> None:
    # Every frame reads them: building each pool's histograms as well cost about 1 ms per
    # provider the process had seen (0.8 s a frame after 1,000), which starved the stream.
    everything = collect_metrics()
    work = collect_work_metrics()
    assert any(f.name.startswith("rag_llm_pool_") for f in everything)
    assert {f.name for f in work} < {f.name for f in everything}
    assert not any(f.name.startswith("rag_llm_pool_") for f in work)
    assert work_frame(work) == work_frame(everything)


def test_the_default_source_shows_every_live_pool(provider: EmbeddingProvider) -> None:
    with AppServer(dashboard_app()) as server:
        frame = httpx2.get(f"{server.url}/dashboard/data").json()
    assert "stream-emb" in [p["provider"] for p in frame["providers"]]


def test_a_stream_stops_when_its_client_disconnects(provider: EmbeddingProvider) -> None:
    source = CountingSource(provider)
    app = dashboard_app(source, interval=0.05, stream_lifetime=60)
    with AppServer(app) as server:
        with httpx2.Client(base_url=server.url) as client, \
                client.stream("GET", "/dashboard/events") as response:
            for n, _ in enumerate(frames_of(response), 1):
                if n == 3:
                    break
        time.sleep(0.2)  # the server notices the disconnect
        after_close = source.calls
        time.sleep(0.4)
        assert source.calls == after_close, "the stream kept running after its client left"
        assert server.stop() < 2.0


def test_server_shutdown_ends_an_open_stream(upstream: UpstreamServer) -> None:
    with create_provider("embedding", provider_config(upstream, name="stream-live")) as p, \
            Traffic(p, threads=2, tasks=0):
        app = dashboard_app(lambda: [p.pool_stats()], interval=0.1, stream_lifetime=1.0)
        with AppServer(app) as server:
            received: list[dict[str, Any]] = []
            failures: list[BaseException] = []
            opened = threading.Event()

            def read() -> None:
                try:
                    with httpx2.Client(base_url=server.url, timeout=5) as client, \
                            client.stream("GET", "/dashboard/events") as response:
                        opened.set()
                        received.extend(frames_of(response))
                except BaseException as exc:
                    failures.append(exc)

            reader = threading.Thread(target=read)
            reader.start()
            assert opened.wait(5)
            time.sleep(0.3)
            took = server.stop()
            reader.join(5)
    assert not reader.is_alive()
    assert failures == []
    assert took < 1.0 + 1.5, "shutdown waited longer than one stream lifetime"
    assert received
    assert received[-1]["providers"][0]["clients"][0]["requests"] > 0
