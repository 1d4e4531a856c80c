"""``python -m benchmarks.langchain_peers`` works: a tiny run reports all four clients.

It measures nothing and asserts no speed. It needs nginx and langchain-openai (the peer; not a
dependency of the integration), and is skipped without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file(),
    reason="nginx is not installed (apt-get install nginx-light): the benchmark upstream",
)


def test_a_tiny_run_reports_every_client_over_pooled_connections(tmp_path: Path) -> None:
    pytest.importorskip("langchain_openai", reason="the peer the benchmark measures")
    pytest.importorskip("trustme", reason="the upstream makes its TLS certificate with trustme")
    samples = tmp_path / "samples.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.langchain_peers", "--calls", "20", "--repeat", "1",
         "--concurrency", "4", "--max-seconds", "20", "--no-pin", "--json", str(samples)],
        cwd=ROOT, capture_output=True, text=True, timeout=55, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for client in ("OpenAIEmbeddings", "RagLLMEmbeddings", "ChatOpenAI", "ChatRagLLM"):
        assert f"`{client}`" in done.stdout
    rows = json.loads(samples.read_text())
    assert {row["client"] for row in rows} == {
        "OpenAIEmbeddings", "RagLLMEmbeddings", "ChatOpenAI", "ChatRagLLM"}
    assert all(row["calls"] == 20 and row["non_200"] == 0 for row in rows)
    # Four callers: at most four connections each, counted at nginx.
    assert all(1 <= row["connections"] <= 4 for row in rows)
