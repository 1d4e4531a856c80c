"""The scenarios, expanded into cells in run order: repeats outermost, clients interleaved.

A cell is one (scenario, client, scheme, RTT, concurrency) measurement, run once per repeat.
Within a repeat every client takes its turn before the next repeat starts, and the order of
clients rotates from one repeat to the next, so that drift on a shared machine spreads over
all clients instead of falling on one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from benchmarks.clients import ClientSpec
from benchmarks.plan import Plan

__all__ = ["SCENARIOS", "Cell", "build_cells", "select_clients"]

# In run order: memory first, while each worker's heap is still fresh; http2 after the
# issue's targets, so that a run out of budget skips it first.
SCENARIOS: Final = ("memory", "latency", "proxy", "throughput", "sync", "http2", "import")
DESCRIPTIONS: Final = {
    "latency": "c=1, pooled vs new client per request, by emulated RTT",
    "proxy": "the latency proxy's own overhead at RTT 0 (direct vs through it)",
    "throughput": "async clients, pooled, RTT 0, by concurrency",
    "http2": "HTTP/2 vs HTTP/1.1 keep-alive: by concurrency at RTT 0, and c=1 by emulated RTT",
    "sync": "sync clients in threads, pooled, RTT 0, by concurrency",
    "memory": "memory per idle open connection",
    "import": "import time in a fresh interpreter (python -X importtime)",
}


@dataclass(frozen=True, slots=True)
class Cell:
    """One measurement of one client; ``repeat`` counts from 0."""

    scenario: str
    client: str
    repeat: int
    scheme: str = "https"
    rtt_ms: int = 0
    via_proxy: bool = False
    concurrency: int = 1
    duration_s: float = 0.0
    max_requests: int = 0
    warmup_s: float = 0.0
    connections: int = 0

    def group(self) -> dict[str, Any]:
        """The fields that identify the cell across repeats."""
        return {"scenario": self.scenario, "client": self.client, "scheme": self.scheme,
                "rtt_ms": self.rtt_ms, "via_proxy": self.via_proxy,
                "concurrency": self.concurrency}

    def label(self) -> str:
        where = f"{self.scheme} rtt={self.rtt_ms}ms" + (" proxy" if self.via_proxy else "")
        return f"{self.scenario} {self.client} {where} c={self.concurrency} #{self.repeat + 1}"


def select_clients(specs: Mapping[str, ClientSpec],
                   patterns: Sequence[str] | None) -> dict[str, ClientSpec]:
    """The clients whose names match any of ``patterns`` (shell-style), all if None."""
    if not patterns:
        return dict(specs)
    return {name: spec for name, spec in specs.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}


def _rotated(names: Sequence[str], by: int) -> list[str]:
    if not names:
        return []
    shift = by % len(names)
    return [*names[shift:], *names[:shift]]


def _in(specs: Mapping[str, ClientSpec], scenario: str) -> list[str]:
    return [name for name, spec in specs.items() if scenario in spec.scenarios]


def _cells(plan: Plan, scenario: str, specs: Mapping[str, ClientSpec],
           repeat: int) -> Iterable[Cell]:
    names = _rotated(_in(specs, scenario), repeat)
    if scenario == "latency":
        for rtt in plan.latency_rtts_ms:
            for scheme in plan.schemes:
                for name in names:
                    yield Cell(scenario, name, repeat, scheme, rtt, rtt > 0, 1,
                               plan.latency_duration_s, plan.latency_requests,
                               plan.warmup_s)
    elif scenario == "proxy":
        # Direct and proxied back to back per client, their order alternating by repeat.
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for name in names:
            for via_proxy in order:
                yield Cell(scenario, name, repeat, "https", 0, via_proxy, 1,
                           plan.latency_duration_s, plan.latency_requests * 2, plan.warmup_s)
    elif scenario in ("throughput", "sync"):
        concurrencies = (plan.throughput_concurrency if scenario == "throughput"
                         else plan.sync_concurrency)
        for concurrency in concurrencies:
            for scheme in plan.schemes:
                for name in names:
                    yield Cell(scenario, name, repeat, scheme, 0, False, concurrency,
                               plan.duration_s, plan.max_requests, plan.warmup_s)
    elif scenario == "http2":
        yield from _http2_cells(plan, names, repeat)
    elif scenario == "memory":
        for name in names:
            yield Cell(scenario, name, repeat, "https", 0, False,
                       plan.memory_connections, connections=plan.memory_connections)


def _http2_cells(plan: Plan, names: Sequence[str], repeat: int) -> Iterable[Cell]:
    """Every concurrency at RTT 0 (throughput bounds), then c=1 at each RTT > 0 (latency
    bounds, through the proxy); c=1 at RTT 0 is the first of the former when both ask it."""
    points = [(0, c) for c in plan.http2_concurrency]
    if 0 in plan.http2_rtts_ms and (0, 1) not in points:
        points.insert(0, (0, 1))
    points += [(rtt, 1) for rtt in plan.http2_rtts_ms if rtt > 0]
    for rtt, concurrency in points:
        for name in names:
            if rtt == 0:
                yield Cell("http2", name, repeat, "https", 0, False, concurrency,
                           plan.duration_s, plan.max_requests, plan.warmup_s)
            else:
                yield Cell("http2", name, repeat, "https", rtt, True, 1,
                           plan.latency_duration_s, plan.latency_requests, plan.warmup_s)


def build_cells(plan: Plan, scenarios: Sequence[str],
                specs: Mapping[str, ClientSpec]) -> list[Cell]:
    """Every load cell of ``scenarios`` (``import`` is measured apart), in run order."""
    cells: list[Cell] = []
    for scenario in SCENARIOS:
        if scenario not in scenarios or scenario == "import":
            continue
        for repeat in range(plan.repeats):
            cells.extend(_cells(plan, scenario, specs, repeat))
    return cells
