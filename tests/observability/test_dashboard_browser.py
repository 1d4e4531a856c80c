"""The dashboard page in headless Chromium: it charts live traffic from a real server.

Needs Playwright for Python and a Chromium binary (Debian's ``chromium`` package, or
``$CHROMIUM``). Without them the test is skipped, except under CI (``$CI`` set), where
it fails. It saves a screenshot to ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import pytest
from dashkit import AppServer, Traffic, dashboard_app, wait_until
from support import provider_config

from rag_llm.providers import create_provider
from rag_llm.testing import Fault, UpstreamServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard.png"
FRAMES = 12  # at 0.25 s a frame and 2 s a stream: the page reconnects at least once


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it")
    pytest.skip(reason)


def test_dashboard_charts_live_traffic_in_headless_chromium(upstream: UpstreamServer) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)")
    upstream.delay = 0.01
    upstream.add_fault(Fault(status=503, times=2,
                             body={"error": {"message": "upstream overloaded"}}))
    config = provider_config(upstream, name="embedding", max_connections=8,
                             max_keepalive_connections=4)
    with create_provider("embedding", config) as provider, Traffic(provider) as traffic:
        app = dashboard_app(lambda: [provider.pool_stats()], interval=0.25,
                            stream_lifetime=2.0)
        assert wait_until(lambda: traffic.calls > 50)
        with AppServer(app) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                console_errors: list[str] = []
                page.on("console", lambda m: console_errors.append(m.text)
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: console_errors.append(str(e)))
                page.goto(f"{server.url}/dashboard")
                page.wait_for_function(
                    f"() => window.ragDashboard && window.ragDashboard.framesReceived >= {FRAMES}",
                    timeout=20_000)
                seen: dict[str, Any] = page.evaluate(
                    "() => ({frames: ragDashboard.framesReceived, status: ragDashboard.status,"
                    " points: ragDashboard.points, latest: ragDashboard.latest,"
                    " canvases: document.querySelectorAll('.chart canvas').length})")
                card = page.inner_text("article[data-provider='embedding']")
                sync_requests = page.inner_text(
                    "article[data-provider='embedding'] .client:nth-of-type(1) "
                    "[data-panel='requests'] .value")
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
            finally:
                browser.close()
    assert console_errors == []
    assert seen["status"] == "live"
    assert set(seen["points"]) == {"embedding/sync", "embedding/async"}
    assert seen["canvases"] == 2 * 6
    for key, latest in seen["latest"].items():
        assert latest["active"] + latest["idle"] > 0, key
        assert latest["rps"] > 0, key
        assert 0 < latest["p50"] <= latest["p95"] <= latest["p99"], key
        assert latest["reuse"] > 1, key
        points = seen["points"][key]
        assert points["connections"] >= FRAMES - 1, (key, points)
        assert points["requests"] >= FRAMES - 2, (key, points)  # no rate on the first frame
    assert float(sync_requests.split()[0].replace(",", "")) > 0
    assert "max_connections 8" in card
    assert "max_keepalive_connections 4" in card
    assert "ServerError" in card
    assert "upstream overloaded" in card
    assert SCREENSHOT.stat().st_size > 10_000
