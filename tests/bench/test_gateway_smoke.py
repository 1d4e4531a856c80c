"""The gateway benchmark runs: a tiny run measures both paths and reports every cell.

It asserts no speed. It needs nginx (Debian: ``apt-get install nginx-light``) and is skipped
where nginx is not installed.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file(),
    reason="nginx is not installed (apt-get install nginx-light): the benchmark upstream",
)


ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_measures_direct_and_gateway_and_reports_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trustme", reason="the upstream makes its TLS certificate with trustme")
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not installed: run from the tree
    from benchmarks.gateway import OPERATIONS, report, run

    figures = run(calls=5, seconds=0.3, repeats=1, levels=(2,), pin=False)
    for name in OPERATIONS:
        for path in ("direct", "gateway"):
            (p50,) = figures.p50[(path, name)]
            (cell,) = figures.cells[(path, name, 2)]
            assert 0 < p50 < 5
            assert cell.rate > 0
            assert cell.client_cpu > 0
        # Only the gateway path has a gateway process whose CPU is counted (in clock ticks:
        # a tiny cell may round to none).
        assert figures.cells[("gateway", name, 2)][0].gateway_cpu >= 0
        assert figures.cells[("direct", name, 2)][0].gateway_cpu == 0
    table = report(figures, (2,)).splitlines()
    assert table[0].split(" | ")[0].strip() == "operation"
    assert [line.split(" | ")[0].strip() for line in table[2:]] == list(OPERATIONS)
    assert not any(math.isnan(p) for ps in figures.p50.values() for p in ps)
