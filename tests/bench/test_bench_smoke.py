"""The benchmark suite's harness works: a tiny run writes its outputs and stops its servers.

It measures nothing and asserts no speed. It needs nginx (Debian: ``apt-get install
nginx-light``) and is skipped where nginx is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rag_llm.config import TRANSPORTS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file(),
    reason="nginx is not installed (apt-get install nginx-light): the benchmark upstream",
)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_tiny_run_writes_results_report_and_charts_and_stops_its_servers(
    tmp_path: Path,
) -> None:
    pytest.importorskip("trustme", reason="the suite makes its TLS certificates with trustme")
    charts = importlib.util.find_spec("matplotlib") is not None
    transport = TRANSPORTS[0]
    command = [
        sys.executable, "-m", "benchmarks", "--plan", "smoke",
        "--clients", f"ragllm-{transport},ragllm-{transport}-sync,floor",
        "--scenarios", "latency,proxy,throughput,sync,memory,import",
        "--out", str(tmp_path), "--no-progress", "--no-pin",
        *([] if charts else ["--no-charts"]),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=50,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    results = json.loads((tmp_path / "results.json").read_text())
    samples = results["samples"]
    assert {s["scenario"] for s in samples} == {
        "latency", "proxy", "throughput", "sync", "memory", "import"}
    failed = [s for s in samples if not s["ok"]]
    assert not failed, failed
    load = [s for s in samples if s["scenario"] in ("latency", "throughput", "sync")]
    assert all(s["requests"] > 0 and s["connections"] >= 1 for s in load)
    assert any(t["target"] == "import rag_llm" for t in results["targets"])

    report = (tmp_path / "report.md").read_text()
    assert "## Targets" in report
    assert f"`ragllm-{transport}`" in report
    assert "# rag-llm benchmark report" in done.stdout
    if charts:
        assert (tmp_path / "throughput.png").stat().st_size > 0
        assert (tmp_path / "latency_by_rtt.png").stat().st_size > 0

    meta = results["meta"]
    for pid in (meta["nginx_pid"], meta["proxy_pid"]):
        assert pid is not None
        assert not _running(pid), f"process {pid} outlived the run"
