"""How much to measure: repeats, durations, concurrencies and round trips of a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["PLANS", "Plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The bounds of one run; every load loop stops at its request count or its seconds.

    >>> PLANS["default"].repeats
    3
    """

    name: str
    repeats: int
    # latency: concurrency 1, pooled versus a new client per request, by emulated RTT
    latency_rtts_ms: tuple[int, ...]
    latency_requests: int
    latency_duration_s: float
    # throughput (async) and sync (threads): pooled clients, RTT 0, by concurrency
    throughput_concurrency: tuple[int, ...]
    sync_concurrency: tuple[int, ...]
    duration_s: float
    max_requests: int
    warmup_s: float
    # memory: requests at once, then held idle; keep it below every pool's default keep-alive
    # cap (httpx and rag-llm: 20) so that every client keeps them all
    memory_connections: int
    import_repeats: int
    schemes: tuple[str, ...] = ("https",)
    # http2: HTTP/2 against HTTP/1.1 keep-alive, HTTPS; by concurrency at RTT 0, and at c=1
    # by emulated RTT (c=1 at RTT 0 is one cell, measured with the throughput bounds)
    http2_concurrency: tuple[int, ...] = (1, 16, 128)
    http2_rtts_ms: tuple[int, ...] = (0, 20)
    # Whole-run bound: cells not started by then are reported as skipped.
    budget_s: float = 900.0

    def with_overrides(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PLANS: Final[dict[str, Plan]] = {
    # About 10 minutes on 2 cores with every client; the plan for numbers you quote.
    "default": Plan(
        name="default",
        repeats=3,
        latency_rtts_ms=(0, 20, 50),
        latency_requests=30,
        latency_duration_s=0.8,
        throughput_concurrency=(1, 16, 128, 256),
        sync_concurrency=(1, 16),
        duration_s=0.6,
        max_requests=20_000,
        warmup_s=0.2,
        memory_connections=16,
        import_repeats=5,
        budget_s=900.0,
    ),
    # About 3 minutes with every client: 2 repeats, the targets' cells and a few HTTP/2 ones.
    "quick": Plan(
        name="quick",
        repeats=2,
        latency_rtts_ms=(0, 20),
        latency_requests=10,
        latency_duration_s=0.4,
        throughput_concurrency=(16, 128),
        sync_concurrency=(16,),
        duration_s=0.3,
        max_requests=5_000,
        warmup_s=0.1,
        memory_connections=16,
        import_repeats=2,
        http2_concurrency=(16, 128),
        http2_rtts_ms=(20,),
        budget_s=270.0,
    ),
    # Seconds: checks that the harness works (tests/bench), measures nothing meaningful.
    "smoke": Plan(
        name="smoke",
        repeats=1,
        latency_rtts_ms=(0, 20),
        latency_requests=5,
        latency_duration_s=0.3,
        throughput_concurrency=(4,),
        sync_concurrency=(4,),
        duration_s=0.2,
        max_requests=500,
        warmup_s=0.05,
        memory_connections=4,
        import_repeats=1,
        http2_concurrency=(4,),
        budget_s=60.0,
    ),
}
