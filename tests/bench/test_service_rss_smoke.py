"""``python -m benchmarks.service_rss`` works: one start of the service on the onnx backend
answers a question, and the figures it prints and writes are the process's own.

It asserts no speed, and a bound on memory only far above what is measured (187 MiB), so
that a service holding a batch's freed memory, or torch, would show.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="the onnx backend is not installed")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_one_start_reports_the_service_memory_and_ready_time(tmp_path: Path) -> None:
    figures = tmp_path / "rss.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.service_rss", "--backend", "onnx", "--repeats", "1",
         "--json", str(figures)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=True)
    assert "| onnx |" in done.stdout
    runs = json.loads(figures.read_text())["onnx"]
    assert set(runs) == {"rss_mib", "peak_mib", "ready_s"}
    (rss,), (peak,), (ready,) = runs["rss_mib"], runs["peak_mib"], runs["ready_s"]
    assert 50 < rss <= peak
    assert rss < 400, runs
    assert 0 < ready < 120
