"""``python -m benchmarks.soak``: a long run of calls under random faults, watched for leaks.

``--calls`` calls (100,000 by default) go through one provider configuration, as its embedding
and its chat provider (``aembed``, ``achat``, ``astream``, and sync ``embed`` from a thread),
to an :class:`~rag_llm.testing.UpstreamServer` behind a :class:`~rag_llm.testing.FaultProxy`,
with retries on. A seeded draw switches the proxy's toxics (resets before and during a
response, latency, latency past the read timeout, timeouts, cuts mid-stream, slow close) on
and off twice per segment; the run is ``--samples`` segments. Halfway through each segment a
*busy* sample is taken with calls in flight; at its end the calls finish, the pools close
their idle connections (``keepalive_expiry``) and a *settled* sample is taken: open file
descriptors, RSS, the providers' pool connections, asyncio tasks, threads, and the
connections open at the server and at the proxy. A leak is a settled series that climbs.

It prints the calls' outcomes and, for each series, its value at 10 % of the calls, at the end
and its spread over the last 90 %, each held to a bound (PASS/FAIL), and writes
``soak.json`` (every sample) and ``soak.png`` to ``--out``. It exits 1 when a bound fails.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import itertools
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

from rag_llm import ChatProvider, EmbeddingProvider, RagLLMError, create_provider
from rag_llm.observability import configure_logging
from rag_llm.testing import (
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    SlowClose,
    Timeout,
    Toxic,
    UpstreamServer,
)

__all__ = ["Sample", "main", "report", "run"]

MAX_CONNECTIONS: Final = 8  # per provider; the callers outnumber them, so calls queue
READ_TIMEOUT: Final = 0.25
KEEPALIVE_EXPIRY: Final = 0.25  # short, so that a segment's end settles in a fraction of a second
SETTLE_S: Final = 5.0  # a settle that takes longer is reported as not settled
HUNG_S: Final = 10.0  # a call still running after this is a hang: five times its deadline
# The bounds every run is held to (the settled series, from the sample at 10 % on).
FD_BOUND: Final = 5
RSS_BOUND_MB: Final = 10.0
TASK_BOUND: Final = 2
THREAD_BOUND: Final = 2
# (operation, share of calls)
OPERATIONS: Final = (("aembed", 0.45), ("achat", 0.25), ("astream", 0.25), ("embed", 0.05))


def settings(base_url: str, transport: str) -> dict[str, Any]:
    """The provider configuration under test: small pool, short timeouts, retries on."""
    return {
        "type": "openai", "model": "m", "api_key": "sk-soak-0123456789", "base_url": base_url,
        "transport": transport, "max_connections": MAX_CONNECTIONS,
        "keepalive_expiry": KEEPALIVE_EXPIRY, "read_timeout": READ_TIMEOUT,
        "first_token_timeout": READ_TIMEOUT, "stream_idle_timeout": READ_TIMEOUT,
        "connect_timeout": 1.0, "deadline": 2.0,
        "retry": {"max_attempts": 4, "base_delay": 0.002, "max_delay": 0.02},
        # Failures bunch when a toxic fires on many connections at once; a breaker open for
        # 30 s would make the rest of the segment fail fast instead of exercising the pool.
        "circuit_breaker": {"consecutive_failures": 25, "open_duration": 0.2},
    }


def _toxics(rng: random.Random) -> list[Toxic]:
    """One phase's faults: none a quarter of the time, else each of the menu at 40 %."""
    if rng.random() < 0.25:
        return []
    menu: list[Callable[[], Toxic]] = [
        lambda: ResetPeer(probability=0.1),  # before the request reaches the server
        lambda: ResetPeer(probability=0.1, after_bytes=rng.randint(100, 2000),
                          direction="downstream"),  # during a response or a stream
        lambda: LimitData(probability=0.1, n_bytes=rng.randint(100, 4000)),  # a FIN mid-way
        lambda: Latency(probability=0.3, seconds=0.002, jitter=0.002),
        lambda: Latency(probability=0.02, seconds=2 * READ_TIMEOUT),  # the read times out
        lambda: Timeout(probability=0.05, seconds=0.05),  # bytes stop, then a FIN
        lambda: SlowClose(probability=0.2, delay=0.2),
    ]
    return [make() for make in menu if rng.random() < 0.4]


@dataclass(frozen=True, slots=True)
class Sample:
    """The process and its connections at one moment; ``kind`` is "busy" or "settled"."""

    calls: int
    seconds: float
    kind: str
    fds: int
    rss_mb: float
    pool: int  # connections both providers' pools hold, active and idle
    pool_max: int  # the most one provider's pools hold (bounded by max_connections)
    slots: int  # call slots and connection budget the providers' limits count as taken
    tasks: int
    threads: int
    server_open: int
    proxy_open: int
    settled: bool = True


@dataclass
class Figures:
    """What a run measured: outcomes per operation and the samples."""

    calls: int
    seconds: float
    seed: int
    concurrency: int
    transport: str
    outcomes: Counter[str] = field(default_factory=Counter)
    by_operation: dict[str, Counter[str]] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    phases: list[list[str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    loop_errors: list[str] = field(default_factory=list)
    requests_served: int = 0


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return int(psutil.Process().num_fds())


def _lingering() -> bool:
    return any(t.name == "rag_llm-closer" for t in threading.enumerate())


def _slots(*providers: EmbeddingProvider | ChatProvider) -> int:
    limits = [pool.limits for p in providers for pool in p.pools.values()]
    return sum(limit.requests.taken + limit.connections.open for limit in limits)


def _pools(*providers: EmbeddingProvider | ChatProvider) -> tuple[int, int]:
    """(connections all pools hold, the most any one provider holds)."""
    each = [sum(c.active + c.idle for snapshot in p.pools_stats() for c in snapshot.clients)
            for p in providers]
    return sum(each), max(each)


class _Soak:
    def __init__(self, upstream: UpstreamServer, proxy: FaultProxy, emb: EmbeddingProvider,
                 llm: ChatProvider, figures: Figures, threads: concurrent.futures.Executor
                 ) -> None:
        self.upstream, self.proxy, self.emb, self.llm = upstream, proxy, emb, llm
        self.figures = figures
        self.threads = threads
        self.rng = random.Random(figures.seed)  # noqa: S311 - a reproducible mix, not secrets
        self.process = psutil.Process()
        self.started = time.monotonic()
        self.done = 0
        names = [name for name, _ in OPERATIONS]
        weights = [share for _, share in OPERATIONS]
        self.plan = self.rng.choices(names, weights, k=figures.calls)
        self.calls: dict[str, Callable[[str], Awaitable[bool]]] = {
            "aembed": self._aembed, "achat": self._achat, "astream": self._astream,
            "embed": self._embed}

    async def _aembed(self, text: str) -> bool:
        return await self.emb.aembed([text]) == [self.upstream.expected_embedding(text)]

    async def _embed(self, text: str) -> bool:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self.threads, self.emb.embed, [text])
        return vectors == [self.upstream.expected_embedding(text)]

    async def _achat(self, text: str) -> bool:
        return await self.llm.achat([{"role": "user", "content": text}]) == f"echo: {text}"

    async def _astream(self, text: str) -> bool:
        deltas = [d async for d in self.llm.astream([{"role": "user", "content": text}])]
        return "".join(deltas) == f"echo: {text}"

    async def one(self, index: int) -> None:
        operation = self.plan[index]
        limit = asyncio.timeout(HUNG_S)
        try:
            async with limit:
                outcome = "ok" if await self.calls[operation](f"soak {index}") else "wrong"
        except Exception as exc:
            if limit.expired():
                outcome = "hung"
            elif isinstance(exc, RagLLMError):
                outcome = type(exc).__name__
            else:
                outcome = f"unexpected {type(exc).__name__}"
        self.figures.outcomes[outcome] += 1
        self.figures.by_operation.setdefault(operation, Counter())[outcome] += 1
        self.done += 1

    def switch_faults(self) -> None:
        toxics = _toxics(self.rng)
        self.proxy.clear()
        for toxic in toxics:
            self.proxy.add(toxic)
        self.figures.phases.append([repr(t) for t in toxics])

    def sample(self, kind: str, settled: bool = True) -> None:
        pool, pool_max = _pools(self.emb, self.llm)
        self.figures.samples.append(Sample(
            calls=self.done, seconds=round(time.monotonic() - self.started, 3), kind=kind,
            fds=_fds(), rss_mb=round(self.process.memory_info().rss / 2**20, 2), pool=pool,
            pool_max=pool_max, slots=_slots(self.emb, self.llm), tasks=len(asyncio.all_tasks()),
            threads=threading.active_count(),
            server_open=self.upstream.connections_open, proxy_open=self.proxy.connections_open,
            settled=settled))

    async def segment(self, start: int, stop: int, concurrency: int) -> None:
        middle = (start + stop) // 2
        cursor = start

        async def caller() -> None:
            nonlocal cursor
            while cursor < stop:
                index, cursor = cursor, cursor + 1
                if index == middle:
                    self.sample("busy")
                    self.switch_faults()
                await self.one(index)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        settled = await self.settle()
        gc.collect()
        self.sample("settled", settled)
        # The server records every request it reads: forgotten here, else they would be the
        # leak this run finds.
        self.figures.requests_served += self.upstream.requests_served
        self.upstream.reset()
        self.switch_faults()

    async def settle(self) -> bool:
        """Wait until no connection is open anywhere: pools, proxy, server, and the sockets
        a closed connection keeps while it waits for the server's close (their thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while loop.time() < deadline:
            if (_pools(self.emb, self.llm)[0] == 0 and _slots(self.emb, self.llm) == 0
                    and self.upstream.connections_open == 0
                    and self.proxy.connections_open == 0 and not _lingering()):
                return True
            await asyncio.sleep(0.01)
        return False


async def _run(figures: Figures, segments: int, progress: bool) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda _loop, context: figures.loop_errors.append(str(context.get("message"))))
    with (UpstreamServer() as upstream, FaultProxy(upstream.port, seed=figures.seed) as proxy,
          concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="soak-sync") as threads):
        config = settings(proxy.base_url, figures.transport)
        async with (create_provider("embedding", config) as emb,
                    create_provider("llm", config) as llm):
            soak = _Soak(upstream, proxy, emb, llm, figures, threads)
            soak.switch_faults()
            bounds = [figures.calls * k // segments for k in range(segments + 1)]
            for n, (start, stop) in enumerate(itertools.pairwise(bounds), 1):
                await soak.segment(start, stop, figures.concurrency)
                if progress and n % max(segments // 10, 1) == 0:
                    last = figures.samples[-1]
                    print(f"soak: {stop:,} calls, {last.seconds:.0f} s, fds {last.fds}, "
                          f"RSS {last.rss_mb:.1f} MB, errors "
                          f"{stop - figures.outcomes['ok']:,}", file=sys.stderr, flush=True)
            figures.seconds = time.monotonic() - soak.started
        figures.faults = proxy.faults_applied


def run(calls: int = 100_000, *, samples: int = 100, concurrency: int = 24, seed: int = 1,
        transport: str = "auto", progress: bool = False) -> Figures:
    """Drive ``calls`` calls in ``samples`` segments; every sample and outcome, returned."""
    if samples < 10 or calls < samples * 2:
        raise ValueError("need at least 10 samples and two calls per sample")
    figures = Figures(calls=calls, seconds=0.0, seed=seed, concurrency=concurrency,
                      transport=transport)
    asyncio.run(_run(figures, samples, progress))
    return figures


@dataclass(frozen=True, slots=True)
class Check:
    """One series held to its bound, from the settled sample at 10 % of the calls on."""

    series: str
    at_10: float
    end: float
    spread: float  # max - min over the last 90 %
    bound: str
    passed: bool


def _window(figures: Figures, kind: str) -> list[Sample]:
    """The ``kind`` samples from 10 % of the calls on (the first 10 % warm up)."""
    return [s for s in figures.samples if s.kind == kind and s.calls >= figures.calls // 10]


def checks(figures: Figures) -> list[Check]:
    settled = _window(figures, "settled")
    busy = [s for s in figures.samples if s.kind == "busy"]
    first, last = settled[0], settled[-1]
    made = []

    def flat(series: str, name: str, bound: float) -> None:
        values = [getattr(s, series) for s in settled]
        made.append(Check(name, values[0], values[-1], max(values) - min(values),
                          f"within +-{bound:g} of the 10 % value",
                          all(abs(v - values[0]) <= bound for v in values)))

    flat("fds", "open fds", FD_BOUND)
    made.append(Check("RSS (MB)", first.rss_mb, last.rss_mb,
                      round(max(s.rss_mb for s in settled) - min(s.rss_mb for s in settled), 2),
                      f"growth < {RSS_BOUND_MB:g} MB",
                      last.rss_mb - first.rss_mb < RSS_BOUND_MB))
    flat("tasks", "asyncio tasks", TASK_BOUND)
    flat("threads", "threads", THREAD_BOUND)
    busiest = max((s.pool_max for s in busy), default=0)
    made.append(Check("pool connections, busy (max of one provider)",
                      _window(figures, "busy")[0].pool_max, busy[-1].pool_max, busiest,
                      f"<= max_connections={MAX_CONNECTIONS}", busiest <= MAX_CONNECTIONS))
    for series, name in (("pool", "pool connections, settled"),
                         ("slots", "call slots and connection budget, settled"),
                         ("server_open", "server connections, settled"),
                         ("proxy_open", "proxy connections, settled")):
        values = [getattr(s, series) for s in settled]
        made.append(Check(name, values[0], values[-1], max(values) - min(values), "0",
                          not any(values) and all(s.settled for s in settled)))
    unexpected = sum(n for k, n in figures.outcomes.items()
                     if k in ("wrong", "hung") or k.startswith("unexpected"))
    made.append(Check("wrong, hung or non-rag-llm errors", 0, unexpected, 0, "0",
                      unexpected == 0))
    made.append(Check("event-loop errors", 0, len(figures.loop_errors), 0, "0",
                      not figures.loop_errors))
    return made


def _count(n: float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.2f}"


def report(figures: Figures, made: list[Check]) -> str:
    """The figures as text: outcomes, faults, then one line per check and the verdict."""
    done = sum(figures.outcomes.values())
    ok = figures.outcomes.get("ok", 0)
    lines = [
        f"soak: {done:,} calls of {figures.calls:,} in {figures.seconds:.1f} s "
        f"({done / max(figures.seconds, 1e-9):,.0f} calls/s), {figures.concurrency} callers, "
        f"transport {figures.transport}, seed {figures.seed}, "
        f"{len([s for s in figures.samples if s.kind == 'settled'])} segments",
        f"outcomes: ok {ok:,} ({100 * ok / max(done, 1):.2f} %); " + "; ".join(
            f"{k} {n:,}" for k, n in figures.outcomes.most_common() if k != "ok"),
        "by operation: " + "; ".join(
            f"{op} {sum(c.values()):,} ({c.get('ok', 0):,} ok)"
            for op, c in sorted(figures.by_operation.items())),
        "faults applied (connections): " + "; ".join(
            f"{k} {n:,}" for k, n in sorted(figures.faults.items())),
        f"phases: {len(figures.phases)}, {sum(1 for p in figures.phases if not p)} without "
        f"faults; requests served by the upstream: {figures.requests_served:,}",
        "",
        f"{'series':46} {'at 10 %':>9} {'end':>9} {'spread':>8}  bound",
    ]
    for check in made:
        lines.append(f"{check.series:46} {_count(check.at_10):>9} {_count(check.end):>9} "
                     f"{_count(check.spread):>8}  {check.bound:34} "
                     f"{'PASS' if check.passed else 'FAIL'}")
    lines += [f"loop error: {message}" for message in figures.loop_errors[:5]]
    lines.append("PASS" if all(c.passed for c in made) else "FAIL")
    return "\n".join(lines)


def write_json(figures: Figures, made: list[Check], path: Path) -> Path:
    data = {
        "calls": figures.calls, "seconds": round(figures.seconds, 3), "seed": figures.seed,
        "concurrency": figures.concurrency, "transport": figures.transport,
        "settings": {k: v for k, v in settings("", figures.transport).items()
                     if k not in ("api_key", "base_url")},
        "outcomes": dict(figures.outcomes),
        "by_operation": {k: dict(v) for k, v in figures.by_operation.items()},
        "faults_applied": figures.faults, "phases": figures.phases,
        "requests_served": figures.requests_served, "loop_errors": figures.loop_errors,
        "checks": [asdict(c) for c in made], "passed": all(c.passed for c in made),
        "samples": [asdict(s) for s in figures.samples],
    }
    path.write_text(json.dumps(data, indent=1))
    return path


def write_chart(figures: Figures, path: Path) -> Path | None:
    """Each series over the calls, busy and settled; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = (("fds", "open file descriptors"), ("rss_mb", "RSS (MB)"),
              ("pool", "pool connections (both providers)"), ("tasks", "asyncio tasks"),
              ("server_open", "connections open at the server"), ("threads", "threads"))
    # Where the settled series must stay, around their value at 10 % of the calls.
    bands = {"fds": (-FD_BOUND, FD_BOUND), "rss_mb": (0.0, RSS_BOUND_MB),
             "tasks": (-TASK_BOUND, TASK_BOUND), "threads": (-THREAD_BOUND, THREAD_BOUND)}
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), sharex=True)
    for ax, (series, title) in zip(axes.flat, panels, strict=True):
        settled = [getattr(s, series) for s in _window(figures, "settled")]
        for kind, style in (("busy", {"color": "#bbbbbb", "linewidth": 1.0}),
                            ("settled", {"color": "#1f6feb", "linewidth": 1.8})):
            points = [s for s in figures.samples if s.kind == kind]
            ax.plot([s.calls for s in points], [getattr(s, series) for s in points],
                    label=kind, **style)
        ax.axvline(figures.calls // 10, color="#d29922", linestyle=":", linewidth=1)
        band = bands.get(series)
        if band is not None and settled:
            ax.axhspan(settled[0] + band[0], settled[0] + band[1], color="#2da44e", alpha=0.12,
                       label="bound")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("calls done")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Soak: {figures.calls:,} calls under random faults (settled: after each "
                 "segment's connections closed; dotted: 10 %)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=100,
                        help="segments, each with a busy and a settled sample")
    parser.add_argument("--concurrency", type=int, default=24, help="callers at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--transport", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak"))
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress line on stderr every 10 %% of the calls")
    args = parser.parse_args(argv)
    configure_logging(level="critical")  # the faults make the breaker log; this is a soak
    try:
        figures = run(args.calls, samples=args.samples, concurrency=args.concurrency,
                      seed=args.seed, transport=args.transport,
                      progress=not args.no_progress)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    made = checks(figures)
    print(report(figures, made))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_json(figures, made, args.out / 'soak.json')}")
    chart = write_chart(figures, args.out / "soak.png")
    print(f"wrote {chart}" if chart else
          "matplotlib is not installed: no chart (pip install 'rag-llm[bench]')")
    return 0 if all(c.passed for c in made) else 1


if __name__ == "__main__":
    raise SystemExit(main())
