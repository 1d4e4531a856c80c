"""Samples into summaries (median and spread over repeats), lookups, and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from benchmarks.stats import spread

__all__ = ["METRICS", "Index", "read_results", "summarize", "write_results"]

# The metrics summarized over repeats, per scenario.
METRICS: Final[Mapping[str, tuple[str, ...]]] = {
    "latency": ("p50_ms", "p90_ms", "p99_ms", "max_ms", "rps", "cpu_ms_per_req",
                "connections"),
    "proxy": ("p50_ms", "p90_ms", "p99_ms", "rps", "cpu_ms_per_req"),
    "throughput": ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_ms_per_req",
                   "connections", "requests_per_connection"),
    "http2": ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_ms_per_req", "connections",
              "connections_used", "requests_per_connection", "http2_share"),
    "sync": ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_ms_per_req", "connections"),
    "memory": ("rss_kb_per_conn", "py_kb_per_conn", "held"),
    "import": ("import_ms", "wall_ms"),
}
_GROUP: Final = ("scenario", "client", "scheme", "rtt_ms", "via_proxy", "concurrency")


def summarize(samples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell group: each metric's median/min/max/quartiles over ok repeats."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for sample in samples:
        if sample.get("skipped"):
            continue
        groups.setdefault(tuple(sample.get(k) for k in _GROUP), []).append(sample)
    summary = []
    for key, members in groups.items():
        ok = [m for m in members if m.get("ok")]
        errors = [str(m.get("error")) for m in members if not m.get("ok") and m.get("error")]
        for m in members:
            errors.extend(m.get("error_samples") or [])
        entry: dict[str, Any] = dict(zip(_GROUP, key, strict=True))
        entry["repeats"] = len(ok)
        entry["failed"] = len(members) - len(ok)
        entry["request_errors"] = sum(int(m.get("errors") or 0) for m in members)
        entry["error_samples"] = sorted(set(errors))[:3]
        entry["metrics"] = {
            metric: spread([float(m[metric]) for m in ok if m.get(metric) is not None])
            for metric in METRICS.get(str(entry["scenario"]), ())
        }
        summary.append(entry)
    return summary


class Index:
    """Summarized metrics by cell: ``index.get("throughput", "aiohttp", "rps", concurrency=16)``."""

    def __init__(self, summary: Iterable[Mapping[str, Any]]) -> None:
        self._entries = list(summary)

    def entry(self, scenario: str, client: str, **params: Any) -> Mapping[str, Any] | None:
        for entry in self._entries:
            if entry["scenario"] == scenario and entry["client"] == client and all(
                entry.get(k) == v for k, v in params.items()
            ):
                return entry
        return None

    def get(self, scenario: str, client: str, metric: str, *, stat: str = "median",
            **params: Any) -> float:
        entry = self.entry(scenario, client, **params)
        if entry is None or entry["repeats"] == 0:
            return math.nan
        value = entry["metrics"].get(metric, {}).get(stat, math.nan)
        return math.nan if value is None else float(value)

    def clients(self, scenario: str) -> list[str]:
        seen: dict[str, None] = {}
        for entry in self._entries:
            if entry["scenario"] == scenario:
                seen.setdefault(entry["client"], None)
        return list(seen)

    def values(self, scenario: str, field: str) -> list[Any]:
        return sorted({entry[field] for entry in self._entries if entry["scenario"] == scenario})


def _clean(value: Any) -> Any:
    """NaN and infinities become null: the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_results(path: Path, results: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(_clean(results), indent=1, sort_keys=False) + "\n",
                    encoding="utf-8")


def read_results(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
