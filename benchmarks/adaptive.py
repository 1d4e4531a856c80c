"""``python -m benchmarks.adaptive``: the adaptive concurrency limit following the upstream.

``--workers`` callers keep one provider (``adaptive_concurrency`` on) busy against the local
upstream, whose capacity (requests in flight before it answers 503) changes mid-run, by
default 16 -> 4 -> 12 for ``--phase`` seconds each. Every 50 ms it samples the limit, the
requests in flight and the refusals; it prints a table per phase and, with matplotlib,
charts the limit against the capacity (``--chart PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rag_llm.errors import ServerError
from rag_llm.observability import configure_logging
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import UpstreamServer

__all__ = ["main"]

_SAMPLE_S = 0.05


@dataclass(frozen=True)
class Sample:
    at: float
    phase: int
    capacity: int
    limit: int
    refused: int
    served: int


def _limit(provider: EmbeddingProvider) -> int:
    stats = next(c.stats for c in provider.pool_stats().clients if c.client == "async")
    return stats.concurrency_limit or 0


async def _run(server: UpstreamServer, capacities: list[int], phase: float,
               workers: int) -> list[Sample]:
    config = {"type": "openai", "base_url": server.base_url, "model": "m",
              "adaptive_concurrency": True, "max_connections": 64,
              "max_keepalive_connections": 32}
    samples: list[Sample] = []
    counts = {"refused": 0, "served": 0}
    stop = asyncio.Event()
    async with create_provider("embedding", config) as provider:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    await provider.aembed(["x"])
                    counts["served"] += 1
                except ServerError:
                    counts["refused"] += 1

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        started = time.monotonic()
        for index, capacity in enumerate(capacities):
            server.capacity = capacity
            ends = time.monotonic() + phase
            while time.monotonic() < ends:
                await asyncio.sleep(_SAMPLE_S)
                samples.append(Sample(time.monotonic() - started, index, capacity,
                                      _limit(provider), counts["refused"], counts["served"]))
        stop.set()
        await asyncio.gather(*tasks)
    return samples


def _report(samples: list[Sample], capacities: list[int]) -> None:
    print("| phase | capacity | limit at end | limit median, 2nd half | refused / s | served / s |")
    print("|---|---|---|---|---|---|")
    for index, capacity in enumerate(capacities):
        phase = [s for s in samples if s.phase == index]
        if len(phase) < 2:
            continue
        late = sorted(s.limit for s in phase[len(phase) // 2:])
        seconds = phase[-1].at - phase[0].at
        print(f"| {index + 1} | {capacity} | {phase[-1].limit} | {late[len(late) // 2]} | "
              f"{(phase[-1].refused - phase[0].refused) / seconds:.0f} | "
              f"{(phase[-1].served - phase[0].served) / seconds:.0f} |")


def _chart(samples: list[Sample], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.step([s.at for s in samples], [s.capacity for s in samples], where="post",
              label="upstream capacity", color="#999999")
    axes.plot([s.at for s in samples], [s.limit for s in samples], label="adaptive limit",
              color="#1f6feb")
    axes.set_xlabel("seconds")
    axes.set_ylabel("requests in flight")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaptive")
    parser.add_argument("--capacities", default="16,4,12",
                        help="upstream capacity in each phase")
    parser.add_argument("--phase", type=float, default=4.0, help="seconds per phase")
    parser.add_argument("--workers", type=int, default=48)
    parser.add_argument("--delay", type=float, default=0.01, help="upstream seconds per request")
    parser.add_argument("--chart", type=Path, default=Path("benchmarks/results/adaptive.png"))
    args = parser.parse_args(argv)
    capacities = [int(part) for part in args.capacities.split(",")]
    configure_logging(level="error")
    with UpstreamServer() as server:
        server.delay = args.delay
        samples = asyncio.run(_run(server, capacities, args.phase, args.workers))
    print(f"{args.workers} callers, upstream {args.delay * 1000:g} ms per request, "
          f"capacity {args.capacities} for {args.phase:g} s each\n")
    _report(samples, capacities)
    try:
        _chart(samples, args.chart)
    except ImportError:
        print("matplotlib is not installed: no chart (pip install 'rag-llm[bench]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
