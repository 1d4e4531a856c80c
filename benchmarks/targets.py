"""The performance issue's targets, evaluated on one run's medians: reported, never asserted."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from benchmarks.results import Index

__all__ = ["TargetResult", "evaluate"]

IMPORT_BUDGET_MS: Final = 150.0


@dataclass(frozen=True, slots=True)
class TargetResult:
    target: str
    client: str
    measured: str
    goal: str
    value: float
    met: bool | None  # None: not measured in this run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result(target: str, client: str, value: float, goal: str, met: Callable[[float], bool],
            measured: Callable[[float], str]) -> TargetResult:
    if math.isnan(value):
        return TargetResult(target, client, "not measured", goal, value, None)
    return TargetResult(target, client, measured(value), goal, value, met(value))


def _latency(index: Index, client: str) -> list[TargetResult]:
    where: dict[str, Any] = {"scheme": "https", "rtt_ms": 20, "concurrency": 1}
    mine = index.get("latency", client, "p50_ms", **where)
    floor = index.get("latency", "floor", "p50_ms", **where)
    new = index.get("latency", "httpx-new", "p50_ms", **where)
    return [
        _result("pooled HTTPS, 20 ms RTT, c=1: p50 vs floor", client, mine / floor,
                "<= 1.10x floor", lambda r: r <= 1.10,
                lambda r: f"{mine:.1f} ms vs {floor:.1f} ms ({r:.3g}x)"),
        _result("pooled HTTPS, 20 ms RTT, c=1: p50 below new client per request", client,
                1 - mine / new, ">= 60 % below", lambda r: r >= 0.60,
                lambda r: f"{mine:.1f} ms vs {new:.1f} ms ({r:.0%} below)"),
    ]


def _at_least(goal: float, ratio: float) -> bool:
    return ratio >= goal


def _rps_text(mine: float, theirs: float, ratio: float) -> str:
    return f"{mine:.0f} vs {theirs:.0f} req/s ({ratio:.3g}x)"


def _throughput(index: Index, client: str, concurrencies: Sequence[int]) -> list[TargetResult]:
    results = []
    for concurrency in concurrencies:
        mine = index.get("throughput", client, "rps", scheme="https", concurrency=concurrency)
        for peer, factor in (("aiohttp", 1.0), ("openai", 5.0), ("litellm", 10.0)):
            theirs = index.get("throughput", peer, "rps", scheme="https",
                               concurrency=concurrency)
            results.append(_result(
                f"throughput HTTPS c={concurrency} vs {peer}", client, mine / theirs,
                f">= {factor:g}x", functools.partial(_at_least, factor),
                functools.partial(_rps_text, mine, theirs),
            ))
    return results


def _cpu(index: Index, client: str) -> TargetResult:
    where: dict[str, Any] = {"scheme": "https", "concurrency": 16}
    mine = index.get("throughput", client, "cpu_ms_per_req", **where)
    base = index.get("throughput", "aiohttp", "cpu_ms_per_req", **where)
    return _result("client CPU per request, HTTPS c=16, vs aiohttp", client, mine / base,
                   "<= 1.25x", lambda r: r <= 1.25,
                   lambda r: f"{mine:.2f} vs {base:.2f} ms ({r:.3g}x)")


def _sync(index: Index, client: str) -> TargetResult:
    where: dict[str, Any] = {"scheme": "https", "concurrency": 16}
    mine = index.get("sync", client, "rps", **where)
    base = index.get("sync", "httpx-sync", "rps", **where)
    return _result("sync throughput HTTPS c=16 (threads) vs httpx Client", client, mine / base,
                   ">= 1.0x", lambda r: r >= 1.0,
                   lambda r: f"{mine:.0f} vs {base:.0f} req/s ({r:.3g}x)")


def evaluate(index: Index, transports: Sequence[str]) -> list[TargetResult]:
    """Every target for every rag-llm transport (async and sync), then import time."""
    results: list[TargetResult] = []
    for transport in transports:
        client = f"ragllm-{transport}"
        results += _latency(index, client)
        results += _throughput(index, client, (16, 128))
        results.append(_cpu(index, client))
        results.append(_sync(index, f"{client}-sync"))
    import_ms = index.get("import", "rag_llm", "import_ms")
    results.append(_result("import rag_llm", "rag_llm", import_ms,
                           f"< {IMPORT_BUDGET_MS:g} ms", lambda v: v < IMPORT_BUDGET_MS,
                           lambda v: f"{v:.0f} ms"))
    return results
