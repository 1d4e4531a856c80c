"""``rag-llm top`` against a real server: provider rows, rates, and an unreachable server."""

from __future__ import annotations

import io

import pytest
from dashkit import AppServer, Traffic, dashboard_app, wait_until
from fastapi import FastAPI
from rich.console import Console
from support import closed_port, provider_config

from rag_llm.observability.top import render_frame, run_top
from rag_llm.providers import create_provider
from rag_llm.testing import Fault, UpstreamServer


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=220, force_terminal=False, color_system=None), out


def test_top_shows_a_row_per_provider_client_with_rates(upstream: UpstreamServer) -> None:
    upstream.delay = 0.002
    upstream.add_fault(Fault(status=500))
    config = provider_config(upstream, name="top-emb", max_connections=12,
                             max_keepalive_connections=6)
    with create_provider("embedding", config) as provider, Traffic(provider):
        app = dashboard_app(lambda: [provider.pool_stats()])
        assert wait_until(lambda: all(c.stats.requests_total > 20
                                    for c in provider.pool_stats().clients))
        with AppServer(app) as server:
            view, out = console()
            assert run_top(server.url, interval=0.5, iterations=2, console=view) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"rag-llm top  {server.url}")
    [head] = [line for line in lines if line.startswith("top-emb")]
    assert "max_connections 12 · max_keepalive_connections 6" in head
    rows = {cells[0]: cells for cells in (line.split() for line in lines)
            if cells and cells[0] in ("sync", "async")}
    assert set(rows) == {"sync", "async"}
    for cells in rows.values():
        assert int(cells[1]) + int(cells[2]) > 0  # connections held
        assert float(cells[3].replace(",", "")) > 0  # requests per second
    [error] = [line for line in lines if "last error" in line]
    assert "(1 in all): ServerError" in error


def test_top_reports_an_unreachable_server_in_one_line() -> None:
    view, out = console()
    assert run_top(f"http://127.0.0.1:{closed_port()}", iterations=1, console=view) == 1
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rag-llm top: cannot reach http://127.0.0.1:")
    assert "refused" in lines[0].lower()


def test_top_names_a_server_without_the_dashboard(upstream: UpstreamServer) -> None:
    view, out = console()
    assert run_top(upstream.origin, iterations=1, console=view) == 1
    assert "HTTP 404 (is the dashboard router included in the app?)" in out.getvalue()


def test_top_hides_credentials_in_the_url() -> None:
    view, out = console()
    assert run_top(f"http://user:hunter2@127.0.0.1:{closed_port()}", iterations=1,
                   console=view) == 1
    assert "hunter2" not in out.getvalue()


def test_render_frame_says_when_no_pool_exists() -> None:
    view, out = console()
    view.print(render_frame({"time": 0.0, "providers": []}, None, "http://x"))
    assert "no connection pools yet" in out.getvalue()


@pytest.mark.parametrize(("interval", "iterations"), [(0.0, 1), (1.0, 0)])
def test_top_rejects_bad_arguments(interval: float, iterations: int) -> None:
    with pytest.raises(ValueError, match=r"interval|iterations"):
        run_top("http://127.0.0.1:1", interval=interval, iterations=iterations)


def test_top_reports_a_frame_it_cannot_read() -> None:
    app = FastAPI()

    @app.get("/dashboard/data")
    def data() -> dict[str, object]:
        return {"time": 1.0, "providers": [{"provider": "x"}]}

    with AppServer(app) as server:
        view, out = console()
        assert run_top(server.url, iterations=1, console=view) == 1
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert "cannot read the frame" in lines[0]


def test_top_shows_the_service_work_with_rates_and_means() -> None:
    def frame(time: float, calls: int, texts: int, seconds: float, queries: int) -> dict:
        return {"time": time, "providers": [], "work": {
            "embedders": [{"embedder": "onnx/all-MiniLM-L6-v2", "where": "local",
                           "calls": calls, "errors": 0, "texts": texts, "seconds": seconds}],
            "queries": {"count": queries, "by_mode": {"extractive": queries},
                        "retrieval_seconds": queries * 0.004, "answer_seconds": 0.0},
            "documents": 7, "chunks": 1234}}

    view, out = console()
    view.print(render_frame(frame(12.0, 30, 300, 1.5, 20), frame(10.0, 10, 100, 0.5, 10),
                            "http://x"))
    text = out.getvalue()
    assert "this service  7 documents · 1,234 chunks" in text
    # 20 calls in 2 s, 200 texts, 1 s between them; 10 queries of 4 ms retrieval each
    assert "embedding 10.0 calls/s · 10.0 texts/call · 50.0 ms mean · 30 calls · " \
           "onnx/all-MiniLM-L6-v2 (local)" in text
    assert "queries 5.0/s · retrieval 4.0 ms · answer 0.0 ms · 20 answered" in text
