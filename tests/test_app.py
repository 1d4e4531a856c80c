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

from fastapi.testclient import TestClient
from support import KEY, closed_port, provider_config

from rag_llm.api import create_app
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.testing import UpstreamServer


def test_health_reports_pools_and_shutdown_closes_them(upstream: UpstreamServer) -> None:
    locator = ServiceLocator(Settings(providers={"embedding": provider_config(upstream)}))
    with TestClient(create_app(locator)) as client:
        assert client.get("/health").json() == {"status": "ok", "providers": {}}
        locator.get("embedding").embed(["warm the pool"])
        body = client.get("/health").json()
        pool = body["providers"]["embedding"]
        assert pool["state"] == "open"
        assert pool["max_connections"] == 100
        sync = pool["clients"][0]
        assert (sync["client"], sync["library"], sync["active"], sync["idle"]) == (
            "sync", "httpx2", 0, 1)
        assert sync["stats"]["connections_opened"] == 1
        assert KEY not in json.dumps(body)
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)
    assert locator.providers() == {}


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
