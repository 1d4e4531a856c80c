"""``python -m benchmarks.batching``: embedding N chunks, batched four ways, in one run.

Against an upstream that takes ``--delay`` seconds per request (the local OpenAI-compatible
``UpstreamServer``, so the delay, not parsing, dominates), it embeds ``--chunks`` texts:

- ``per-text``: one request per text, all issued at once over one pooled provider;
- ``sequential``: batches of ``--batch`` texts sent one after another (LangChain's way);
- ``split``: one ``aembed`` of the whole list, split into concurrent batches of ``--batch``;
- ``coalesced``: one ``aembed`` call per text, coalesced into shared batched requests.

It prints wall time, upstream requests and connections for each, and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from rag_llm.observability import configure_logging
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import UpstreamServer

__all__ = ["main"]


@dataclass(frozen=True)
class Row:
    strategy: str
    seconds: float
    requests: int
    connections: int


def _provider(server: UpstreamServer, **overrides: Any) -> EmbeddingProvider:
    # A long pool_timeout: 10,000 calls at once queue for the pool's 100 connections far
    # longer than the default 5 s allows.
    return create_provider("embedding", {"type": "openai", "base_url": server.base_url,
                                         "model": "text-embedding-3-small",
                                         "pool_timeout": 600.0, **overrides})


async def _per_text(server: UpstreamServer, texts: list[str], batch: int) -> None:
    async with _provider(server) as provider:
        await asyncio.gather(*(provider.aembed([t]) for t in texts))


async def _sequential(server: UpstreamServer, texts: list[str], batch: int) -> None:
    async with _provider(server) as provider:
        for start in range(0, len(texts), batch):
            await provider.aembed(texts[start:start + batch])


async def _split(server: UpstreamServer, texts: list[str], batch: int) -> None:
    async with _provider(server, max_batch_size=batch) as provider:
        await provider.aembed(texts)


async def _coalesced(server: UpstreamServer, texts: list[str], batch: int) -> None:
    async with _provider(server, max_batch_size=batch, coalesce_window=0.005) as provider:
        await asyncio.gather(*(provider.aembed([t]) for t in texts))


STRATEGIES: dict[str, Callable[[UpstreamServer, list[str], int], Coroutine[Any, Any, None]]] = {
    "per-text": _per_text,
    "sequential": _sequential,
    "split": _split,
    "coalesced": _coalesced,
}


def _measure(server: UpstreamServer, name: str, texts: list[str], batch: int) -> Row:
    server.reset()
    started = time.perf_counter()
    asyncio.run(STRATEGIES[name](server, texts, batch))
    seconds = time.perf_counter() - started
    return Row(name, seconds, server.requests_served, server.connections_accepted)


def _median(rows: list[Row]) -> Row:
    return sorted(rows, key=lambda row: row.seconds)[len(rows) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batching",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=64, help="texts per request")
    parser.add_argument("--delay", type=float, default=0.02, help="upstream seconds per request")
    parser.add_argument("--repeat", type=int, default=3, help="runs per strategy, interleaved")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    texts = [f"chunk {i}: " + "lorem ipsum dolor sit amet " * 8 for i in range(args.chunks)]
    with UpstreamServer() as server:
        server.delay = args.delay
        server.embedding_dim = 16
        runs = [[_measure(server, name, texts, args.batch) for name in STRATEGIES]
                for _ in range(args.repeat)]
    rows = [_median([run[i] for run in runs]) for i in range(len(STRATEGIES))]
    print(f"{args.chunks} chunks, {args.batch} per batched request, upstream "
          f"{args.delay * 1000:g} ms per request; median [min-max] of {args.repeat} runs\n")
    print("| strategy | wall s | requests | connections | vs sequential | vs per-text |")
    print("|---|---|---|---|---|---|")
    by_name = {row.strategy: row for row in rows}
    spread = {name: (min(r[i].seconds for r in runs), max(r[i].seconds for r in runs))
              for i, name in enumerate(STRATEGIES)}
    for row in rows:
        low, high = spread[row.strategy]
        print(f"| {row.strategy} | {row.seconds:.2f} [{low:.2f}-{high:.2f}] | {row.requests} | "
              f"{row.connections} | "
              f"{by_name['sequential'].seconds / row.seconds:.1f}x faster | "
              f"{by_name['per-text'].requests / row.requests:.1f}x fewer requests |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
