"""``python -m benchmarks.soak`` works: a short soak prints every figure, writes its samples
and passes its own bounds, and those bounds fail on series that climb.

It asserts no speed. The soak runs its upstream and fault proxy in-process (rag_llm.testing),
so it needs neither nginx nor the network.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

SERIES = ("open fds", "RSS (MB)", "asyncio tasks", "threads",
          "pool connections, busy (max of one provider)", "pool connections, settled",
          "call slots and connection budget, settled",
          "server connections, settled", "proxy connections, settled",
          "wrong, hung or non-rag-llm errors", "event-loop errors")


def test_a_short_soak_reports_every_series_within_its_bound(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--calls", "2000", "--samples", "10",
         "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("soak: 2,000 calls of 2,000 in ")
    assert lines[1].startswith("outcomes: ok ")
    table = {line[:46].strip(): line.split() for line in lines if line[:46].strip() in SERIES}
    assert set(table) == set(SERIES)
    assert all(row[-1] == "PASS" for row in table.values())
    assert "PASS" in lines
    assert "FAIL" not in done.stdout

    data = json.loads((tmp_path / "soak.json").read_text())
    assert data["passed"] is True
    assert sum(data["outcomes"].values()) == 2000
    assert set(data["by_operation"]) == {"aembed", "achat", "astream", "embed"}
    # Faults were really switched on (and off: some phases have none).
    assert sum(data["faults_applied"].values()) > 0
    assert any(not phase for phase in data["phases"])
    assert any(data["phases"])
    samples = data["samples"]
    assert [s["kind"] for s in samples] == ["busy", "settled"] * 10
    assert [s["calls"] for s in samples if s["kind"] == "settled"] == list(range(200, 2001, 200))
    # Busy samples saw connections in use; settled ones none, anywhere.
    assert max(s["pool"] for s in samples if s["kind"] == "busy") > 0
    assert all(s["pool"] == s["slots"] == s["server_open"] == s["proxy_open"] == 0
               and s["settled"]
               for s in samples if s["kind"] == "settled")
    assert "sk-soak" not in done.stdout + (tmp_path / "soak.json").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "soak.png").stat().st_size > 0


def _figures(fds: list[int], rss: list[float]) -> Any:
    from benchmarks.soak import Figures, Sample

    figures = Figures(calls=1000, seconds=1.0, seed=1, concurrency=4, transport="auto")
    figures.outcomes["ok"] = 1000
    for n, (fd, mb) in enumerate(zip(fds, rss, strict=True), 1):
        for kind in ("busy", "settled"):
            figures.samples.append(Sample(
                calls=n * 100 - (50 if kind == "busy" else 0), seconds=n, kind=kind,
                fds=fd + (30 if kind == "busy" else 0), rss_mb=mb,
                pool=4 if kind == "busy" else 0, pool_max=4 if kind == "busy" else 0,
                slots=0, tasks=3, threads=6, server_open=0, proxy_open=0))
    return figures


def test_a_climbing_fd_count_or_rss_fails_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not installed: run from the tree
    from benchmarks.soak import checks, report

    flat = checks(_figures([17] * 10, [60.0 + n / 10 for n in range(10)]))
    assert all(c.passed for c in flat)
    # One descriptor leaked per 100 calls, or 1.5 MB: what a leak looks like in the series.
    leaking = _figures([17 + n for n in range(10)], [60.0 + 1.5 * n for n in range(10)])
    made = {c.series: c for c in checks(leaking)}
    assert not made["open fds"].passed
    assert (made["open fds"].at_10, made["open fds"].end) == (17, 26)
    assert not made["RSS (MB)"].passed
    assert made["asyncio tasks"].passed
    assert report(leaking, list(made.values())).splitlines()[-1] == "FAIL"
