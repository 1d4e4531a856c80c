"""The FastAPI app: health reports pools; shutdown closes every connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import KEY, closed_port, provider_config

import rag_llm.locator as locator_module
from rag_llm.api import create_app
from rag_llm.config import Settings
from rag_llm.errors import ConfigError
from rag_llm.locator import LocatorState, ServiceLocator, get_service_locator
from rag_llm.rag.settings import RagSettings
from rag_llm.testing import UpstreamServer


def test_health_reports_pools_and_shutdown_closes_them(upstream: UpstreamServer) -> None:
    locator = ServiceLocator(Settings(providers={"embedding": provider_config(upstream)}))
    with TestClient(create_app(locator)) as client:
        # Built at start-up, so a bad setting stops it; no connection is opened yet.
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["providers"]["embedding"]["state"] == "unopened"
        locator.get("embedding").embed(["warm the pool"])
        body = client.get("/health").json()
        pool = body["providers"]["embedding"]
        assert pool["state"] == "open"
        assert pool["max_connections"] == 100
        sync = pool["clients"][0]
        assert (sync["client"], sync["library"], sync["active"], sync["idle"]) == (
            "sync", "httpx2", 0, 1)
        assert sync["connections_opened"] == 1
        assert KEY not in json.dumps(body)
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)
    assert locator.providers() == {}


def test_metrics_and_readiness_are_served(upstream: UpstreamServer) -> None:
    locator = ServiceLocator(Settings(providers={"embedding": provider_config(upstream)}))
    with TestClient(create_app(locator)) as client:
        locator.get("embedding").embed(["x"])
        metrics = client.get("/metrics")
        ready = client.get("/health/ready")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert "rag_llm_connections_opened" in families
    assert KEY not in metrics.text
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["providers"]["embedding"]["idle"] == 1


def test_every_response_carries_a_request_id_bound_to_its_log_context() -> None:
    app = create_app(ServiceLocator(Settings()))

    @app.get("/probe")
    def probe() -> dict[str, object]:
        return dict(structlog.contextvars.get_contextvars())

    with TestClient(app) as client:
        kept = client.get("/probe", headers={"X-Request-ID": "req-42.a"})
        replaced = client.get("/probe", headers={"X-Request-ID": "no spaces\nor newlines"})
        made = client.get("/probe")
    assert kept.headers["x-request-id"] == "req-42.a"
    assert kept.json() == {"request_id": "req-42.a"}
    assert replaced.headers["x-request-id"] != "no spaces\nor newlines"
    assert len(made.headers["x-request-id"]) == 32
    assert made.json() == {"request_id": made.headers["x-request-id"]}


def test_rag_llm_serve_closes_pools_on_sigterm(upstream: UpstreamServer, tmp_path: Path) -> None:
    config = tmp_path / "rag-llm.toml"
    config.write_text(
        "[providers.embedding]\n"
        f'type = "openai"\nmodel = "m"\nbase_url = "{upstream.base_url}"\n'
        '[logging]\nformat = "json"\n'
    )
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port), "--config",
         str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert json.load(r)["status"] == "ok"
                    break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    # uvicorn re-raises the signal once it has shut down gracefully.
    assert process.returncode in (0, -signal.SIGTERM)
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "service_locator_cleanup_success" in events


def test_an_app_on_the_process_wide_locator_uses_the_live_one_after_a_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setattr(locator_module, "_locator", None)
    app = create_app(rag_settings=RagSettings(data_dir=tmp_path))
    with TestClient(app):
        first = app.state.rag.locator
        assert first is get_service_locator()
    assert first.state is LocatorState.CLOSED
    with TestClient(app):
        # Not the closed one, which would refuse to build the RAG service's providers.
        assert app.state.rag.locator is get_service_locator()
        assert app.state.rag.locator.state is LocatorState.OPEN
    assert locator_module._locator is None


def test_health_is_not_ok_while_a_configured_provider_cannot_be_built(tmp_path: Path) -> None:
    bad = {"type": "openai", "model": "m", "base_url": "ftp//nowhere", "api_key": KEY}
    locator = ServiceLocator(Settings(providers={"embedding": bad}))
    client = TestClient(create_app(locator))  # no lifespan: nothing was built at start
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert "base_url='ftp//nowhere'" in body["providers"]["embedding"]["error"]
    assert KEY not in response.text


def test_startup_fails_on_a_provider_that_cannot_be_built() -> None:
    bad = {"type": "openai", "model": "m", "max_conections": 5}
    locator = ServiceLocator(Settings(providers={"embedding": bad}))
    with pytest.raises(ConfigError, match="did you mean `max_connections`"), \
            TestClient(create_app(locator)):
        pass
