"""Verify rag-llm's connection pooling end to end.

Four checks, each reported PASS or FAIL:

1. Pool settings: providers of every kind ("embedding", "llm") expose the configured
   max_keepalive_connections, max_connections and keepalive_expiry.
2. Connection reuse: sequential calls (aembed, embed, achat and astream) use exactly one
   TCP connection per client.
3. Pooled vs a new client per request: wall time, req/s, p50/p95 latency and connections
   opened at each concurrency; a pool opens at most `concurrency` connections, a client
   per request opens one per request. The speed-up is printed, not asserted.
4. Cleanup: ServiceLocator.cleanup() closes every connection and file descriptor.

Run it with no arguments to check against a local HTTPS upstream
(rag_llm.testing.UpstreamServer, needs the "testing" extra) that counts TCP connections
at the server side:

    python scripts/test_connection_pooling.py
    python scripts/test_connection_pooling.py --requests 500 --concurrency 1,16,64

With OPENAI_API_KEY set, or with --base-url for any OpenAI-compatible API, it runs
against that API with small request counts; connection counts then come from the pool's
own view (connections held = active + idle), as the server's are out of reach.
--local forces the local upstream even when OPENAI_API_KEY is set.

Exit status: 0 when every check passes, 1 when one fails, 2 on a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from rag_llm.errors import ConfigError, ProviderClosedError, RagLLMError
from rag_llm.locator import ServiceLocator
from rag_llm.observability import configure_logging
from rag_llm.providers import BaseProvider, ChatProvider, EmbeddingProvider, create_provider
from rag_llm.validation import redact_url

if TYPE_CHECKING:
    from rag_llm.testing import UpstreamServer

PROG: Final = "test_connection_pooling"
OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
LOCAL_API_KEY: Final = "sk-local-verification-key"  # accepted only by the local upstream
TEXT: Final = "connection pooling check"
MESSAGES: Final = ({"role": "user", "content": "Reply with one word: ok"},)
MAX_TOKENS: Final = 5  # keeps chat calls cheap on a paid API
# Non-default limits, so check 1 proves they come from config.
CONFIGURED_LIMITS: Final[dict[str, int | float]] = {
    "max_keepalive_connections": 16,
    "max_connections": 64,
    "keepalive_expiry": 15.0,
}
SERVER_SETTLE_S: Final = 5.0


@dataclass(frozen=True)
class Target:
    """Where requests go and how to reach them; ``server`` is set for the local upstream."""

    base_url: str
    api_key: str | None
    verify: str | None
    embedding_model: str
    chat_model: str
    transport: str
    server: UpstreamServer | None = None


@dataclass(frozen=True)
class Options:
    calls: int
    requests: int
    concurrency: tuple[int, ...]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    lines: list[str]


# -- output ----------------------------------------------------------------------------


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or (cell[:1] == "-" and cell[1:2].isdigit())


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned plain-text table; columns whose cells are all numbers align right."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    right = [bool(rows) and all(_numeric(r[i]) or r[i] == "n/a" for r in rows)
             for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right,
                                                                      strict=True))
        return "  " + "  ".join(padded).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def print_result(result: CheckResult) -> None:
    for line in result.lines:
        print(line)
    print(f"  {'PASS' if result.passed else 'FAIL'}")
    print()


# -- providers and counters --------------------------------------------------------------


def provider_config(target: Target, model: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"type": "openai", "base_url": target.base_url, "model": model,
                              "transport": target.transport}
    if target.api_key:
        config["api_key"] = target.api_key
    if target.verify is not None:
        config["verify"] = target.verify
    config.update(overrides)
    return config


def embedding_provider(target: Target, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding",
                           provider_config(target, target.embedding_model, **overrides))


def chat_provider(target: Target, **overrides: Any) -> ChatProvider:
    return create_provider("llm", provider_config(target, target.chat_model, **overrides))


def connections_held(provider: BaseProvider, client: str | None = None) -> int:
    """Connections the pool holds (active + idle), for one client or all of them."""
    return sum(c.active + c.idle for c in provider.pool_stats().clients
               if client is None or c.client == client)


def open_fds() -> int | None:
    """Open file descriptors of this process, or None where the OS does not list them."""
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return len(os.listdir(path))
    return None


async def server_settles(server: UpstreamServer | None, open_connections: int = 0) -> bool:
    """Wait until the local upstream sees ``open_connections`` open; True without one."""
    if server is None:
        return True
    return await asyncio.to_thread(
        server.wait_until, lambda s: s.connections_open == open_connections, SERVER_SETTLE_S)


async def fds_settle(baseline: int | None) -> int | None:
    """The fd count once it is back to ``baseline``, or after a short grace period."""
    deadline = time.monotonic() + SERVER_SETTLE_S
    count = open_fds()
    while baseline is not None and count is not None and count > baseline:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
        count = open_fds()
    return count


async def chat_once(chat: ChatProvider, streamed: bool) -> str:
    if streamed:
        return "".join([piece async for piece in chat.astream(MESSAGES, max_tokens=MAX_TOKENS)])
    return await chat.achat(MESSAGES, max_tokens=MAX_TOKENS)


# -- check 1: pool settings ----------------------------------------------------------------


async def check_pool_settings(target: Target, options: Options) -> CheckResult:
    rows: list[list[str]] = []
    providers = (embedding_provider(target, **CONFIGURED_LIMITS),
                 chat_provider(target, **CONFIGURED_LIMITS))
    for provider in providers:
        snapshot = provider.pool_stats()
        for setting, configured in CONFIGURED_LIMITS.items():
            attribute = getattr(provider, setting)
            pooled = getattr(snapshot, setting)
            ok = attribute == configured == pooled
            rows.append([provider.kind, setting, str(configured), str(attribute), str(pooled),
                         verdict(ok)])
        await provider.aclose()
    table = format_table(["kind", "setting", "configured", "attribute", "pool_stats()",
                          "result"], rows)
    return CheckResult(all(r[-1] == "ok" for r in rows), table)


# -- check 2: connection reuse -------------------------------------------------------------


@dataclass(frozen=True)
class ReuseRow:
    """One client's sequential calls: requests, connections, and whether one stayed pooled."""

    client: str
    calls: int
    served: int
    connections: int
    kept: bool  # the pool held a connection after every call (none was closed)
    server_side: bool

    @property
    def ok(self) -> bool:
        if self.server_side:
            return self.connections == 1 and self.served == self.calls
        return self.connections == 1 and self.kept

    def cells(self) -> list[str]:
        ratio = f"{self.served / self.connections:.1f}" if self.connections else "n/a"
        return [self.client, str(self.calls), str(self.served), str(self.connections), ratio,
                "yes" if self.kept else "no", verdict(self.ok)]


@dataclass
class HeldRange:
    """Fewest and most connections a client held, sampled after each call."""

    least: int = sys.maxsize
    most: int = 0

    def sample(self, provider: BaseProvider, client: str) -> None:
        held = connections_held(provider, client)
        self.least, self.most = min(self.least, held), max(self.most, held)


async def call_sequentially(call: Callable[[], Awaitable[object]], count: int,
                            provider: BaseProvider) -> HeldRange:
    held = HeldRange()
    for _ in range(count):
        await call()
        held.sample(provider, "async")
    return held


def call_sequentially_sync(call: Callable[[], object], count: int,
                           provider: BaseProvider) -> HeldRange:
    held = HeldRange()
    for _ in range(count):
        call()
        held.sample(provider, "sync")
    return held


async def measure_reuse(target: Target, client: str, calls: int,
                        work: Awaitable[HeldRange]) -> ReuseRow:
    """Run ``work``; connections come from the server when local, else from the pool."""
    server = target.server
    if server is None:
        held = await work
        return ReuseRow(client, calls, calls, held.most, held.least >= 1, server_side=False)
    accepted, served = server.connections_accepted, server.requests_served
    held = await work
    return ReuseRow(client, calls, server.requests_served - served,
                    server.connections_accepted - accepted, held.least >= 1, server_side=True)


async def reuse_rows(target: Target, calls: int) -> list[ReuseRow]:
    async with embedding_provider(target) as emb, chat_provider(target) as chat, \
            chat_provider(target) as streamer:
        return [
            await measure_reuse(target, "embedding async (aembed)", calls, call_sequentially(
                lambda: emb.aembed(TEXT), calls, emb)),
            await measure_reuse(target, "embedding sync (embed)", calls, asyncio.to_thread(
                call_sequentially_sync, lambda: emb.embed(TEXT), calls, emb)),
            await measure_reuse(target, "llm async (achat)", calls, call_sequentially(
                lambda: chat_once(chat, streamed=False), calls, chat)),
            await measure_reuse(target, "llm async (astream)", calls, call_sequentially(
                lambda: chat_once(streamer, streamed=True), calls, streamer)),
        ]


async def check_reuse(target: Target, options: Options) -> CheckResult:
    rows = await reuse_rows(target, options.calls)
    lines = format_table(["client", "calls", "served", "connections", "reuse", "kept", "result"],
                         [row.cells() for row in rows])
    if target.server is not None:
        lines.append("  served, connections: requests served and TCP connections accepted by "
                     "the server; expected: 1 connection per client")
    else:
        lines.append("  served, connections: calls completed and the most connections the pool "
                     "held (active + idle);")
        lines.append("  server-side counts are unavailable for a remote API; expected: the pool "
                     "held exactly 1 connection after every call")
    lines.append("  kept: the pool still held a connection after every call (none was closed)")
    return CheckResult(all(row.ok for row in rows), lines)


# -- check 3: pooled vs a new client per request -----------------------------------------


@dataclass(frozen=True)
class Run:
    client: str
    concurrency: int
    wall_s: float
    latencies_ms: list[float]
    connections: int

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def ok(self, requests: int) -> bool:
        if len(self.latencies_ms) != requests:
            return False
        if self.client == "pooled":
            return 1 <= self.connections <= self.concurrency
        return self.connections == requests


async def timed_run(call: Callable[[], Awaitable[int]], requests: int,
                    concurrency: int) -> tuple[float, list[float], list[int]]:
    """``requests`` calls by ``concurrency`` workers: wall time, latencies, observations."""
    remaining = iter(range(requests))
    latencies: list[float] = []
    observed: list[int] = []

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            observed.append(await call())
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, requests)):
            group.create_task(worker())
    return time.perf_counter() - started, latencies, observed


async def run_pooled(target: Target, limits: dict[str, int], requests: int,
                     concurrency: int) -> Run:
    async with embedding_provider(target, **limits) as provider:

        async def call() -> int:
            await provider.aembed(TEXT)
            return connections_held(provider, "async")

        return await counted_run(target, "pooled", call, requests, concurrency, max)


async def run_new_client(target: Target, requests: int, concurrency: int) -> Run:
    async def call() -> int:
        async with embedding_provider(target) as provider:
            await provider.aembed(TEXT)
            return connections_held(provider, "async")

    return await counted_run(target, "new client", call, requests, concurrency, sum)


async def counted_run(target: Target, client: str, call: Callable[[], Awaitable[int]],
                      requests: int, concurrency: int,
                      combine: Callable[[list[int]], int]) -> Run:
    """Time the calls; count connections at the server, or combine the pool's views."""
    server = target.server
    await server_settles(server)
    accepted = server.connections_accepted if server else 0
    wall_s, latencies, observed = await timed_run(call, requests, concurrency)
    if server is not None:
        connections = server.connections_accepted - accepted
    else:
        connections = combine(observed) if observed else 0
    return Run(client, concurrency, wall_s, latencies, connections)


def run_cells(run: Run, requests: int, speedup: str) -> list[str]:
    return [str(run.concurrency), run.client, f"{run.wall_s:.2f}", f"{run.rate:.0f}",
            f"{run.percentile(50):.2f}", f"{run.percentile(95):.2f}", str(run.connections),
            speedup, verdict(run.ok(requests))]


async def check_pooled_vs_new_client(target: Target, options: Options) -> CheckResult:
    # Keep as many idle connections as there are workers, so none is closed between calls.
    widest = max(options.concurrency)
    limits = {"max_keepalive_connections": widest, "max_connections": max(widest, 100)}
    async with embedding_provider(target) as warm_up:  # imports, TLS context, first handshake
        await warm_up.aembed(TEXT)
    rows: list[list[str]] = []
    passed = True
    for concurrency in options.concurrency:
        pooled = await run_pooled(target, limits, options.requests, concurrency)
        new = await run_new_client(target, options.requests, concurrency)
        rows.append(run_cells(pooled, options.requests, f"{pooled.rate / new.rate:.1f}x"))
        rows.append(run_cells(new, options.requests, ""))
        passed = passed and pooled.ok(options.requests) and new.ok(options.requests)
    connections = "conns opened" if target.server else "conns (pool view)"
    lines = format_table(["concurrency", "client", "wall s", "req/s", "p50 ms", "p95 ms",
                          connections, "speed-up", "result"], rows)
    lines.append(f"  {options.requests} aembed requests per row; speed-up = pooled req/s / "
                 "new-client req/s (reported, not asserted)")
    lines.append("  new client: a new provider per request; it shares the process's cached TLS "
                 "context, so it pays the handshakes but not a CA-bundle load (~40 ms CPU) "
                 "as a new httpx client would")
    lines.append("  expected: pooled opens at most `concurrency` connections, "
                 "a new client per request opens one per request")
    if target.server is None:
        lines.append("  note: remote API, so connections are the pool's own view: the most a "
                     "pooled provider held, the sum held by the per-request clients")
    return CheckResult(passed, lines)


# -- check 4: cleanup ------------------------------------------------------------------------


async def use_locator(locator: ServiceLocator) -> None:
    """Sync and async calls through the providers the locator hands out."""
    emb: EmbeddingProvider = locator.get("embedding")
    chat: ChatProvider = locator.get("llm")
    await emb.aembed(TEXT)
    await asyncio.to_thread(emb.embed, TEXT)
    await chat_once(chat, streamed=False)
    await chat_once(chat, streamed=True)
    await asyncio.to_thread(chat.chat, list(MESSAGES), max_tokens=MAX_TOKENS)


async def raises_closed(provider: EmbeddingProvider) -> bool:
    try:
        await provider.aembed(TEXT)
    except ProviderClosedError:
        return True
    return False


def cleanup_row(what: str, before: int | None, during: int | None,
                after: int | None, ok: bool) -> list[str]:
    def cell(value: int | None) -> str:
        return "n/a" if value is None else str(value)

    unavailable = after is None
    return [what, cell(before), cell(during), cell(after),
            "skipped (unavailable)" if unavailable else verdict(ok)]


async def check_cleanup(target: Target, options: Options) -> CheckResult:
    server = target.server
    await server_settles(server)
    fds_before = open_fds()
    emb, chat = embedding_provider(target), chat_provider(target)
    locator = ServiceLocator()
    locator.register("embedding", emb)
    locator.register("llm", chat)
    await use_locator(locator)
    server_during = server.connections_open if server else None
    held_during = connections_held(emb) + connections_held(chat)
    fds_during = open_fds()
    await locator.cleanup()
    server_closed = await server_settles(server)
    server_after = server.connections_open if server else None
    held_after = connections_held(emb) + connections_held(chat)
    fds_after = await fds_settle(fds_before)
    states = {emb.pool_stats().state, chat.pool_stats().state}
    refused = await raises_closed(emb)
    rows = [
        cleanup_row("server: open connections", 0 if server else None, server_during,
                    server_after, server_closed and server_after == 0),
        cleanup_row("pool: connections held", 0, held_during, held_after, held_after == 0),
        # Fewer than before is no leak: a descriptor of an earlier check may close meanwhile.
        cleanup_row("process: open file descriptors", fds_before, fds_during, fds_after,
                    fds_after is not None and fds_before is not None
                    and fds_after <= fds_before),
        ["pool state", "unopened", "open", "/".join(sorted(states)),
         verdict(states == {"closed"})],
        ["call after cleanup", "", "", "ProviderClosedError" if refused else "no error",
         verdict(refused)],
    ]
    lines = format_table(["what", "before", "after calls", "after cleanup", "result"], rows)
    if server is not None:
        lines.append("  the local upstream runs in this process: its sockets count as file "
                     "descriptors too")
    return CheckResult(all(r[-1] in ("ok", "skipped (unavailable)") for r in rows), lines)


# -- running ---------------------------------------------------------------------------------

Check = Callable[[Target, Options], Awaitable[CheckResult]]
CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("Pool settings come from config", check_pool_settings),
    ("Connection reuse: sequential calls share one connection per client", check_reuse),
    ("Pooled vs a new client per request", check_pooled_vs_new_client),
    ("Cleanup: ServiceLocator.cleanup() closes connections and descriptors", check_cleanup),
)


async def run_check(check: Check, target: Target, options: Options) -> CheckResult:
    try:
        return await check(target, options)
    except RagLLMError as exc:
        if isinstance(exc, ConfigError):
            raise
        return CheckResult(False, [f"  error: {type(exc).__name__}: {exc}"])


async def run_checks(target: Target, options: Options) -> int:
    started = time.perf_counter()
    failed: list[str] = []
    for number, (title, check) in enumerate(CHECKS, start=1):
        print(f"[{number}/{len(CHECKS)}] {title}", flush=True)
        result = await run_check(check, target, options)
        print_result(result)
        if not result.passed:
            failed.append(title)
    print(f"{len(CHECKS)} checks: {len(CHECKS) - len(failed)} passed, {len(failed)} failed"
          f" ({time.perf_counter() - started:.1f} s)")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def describe(target: Target, options: Options) -> None:
    if target.server is not None:
        print(f"upstream: local UpstreamServer {target.base_url} (HTTPS, generated CA); "
              "connection counts are server-side")
    else:
        print(f"upstream: {redact_url(target.base_url)} (remote; api key "
              f"{'set' if target.api_key else 'not set'}); connection counts are the pool's "
              "own view")
    print(f"models: {target.embedding_model}, {target.chat_model}; transport: "
          f"{target.transport}")
    print(f"sequential calls: {options.calls}; requests per run: {options.requests}; "
          f"concurrency: {','.join(map(str, options.concurrency))}")
    print()


# -- command line ----------------------------------------------------------------------------


class UsageError(Exception):
    """The arguments cannot be used as given."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def concurrency_list(text: str) -> tuple[int, ...]:
    values = tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one concurrency, e.g. 1,8,32")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="an OpenAI-compatible API to check instead of the "
                        "local upstream")
    parser.add_argument("--api-key", help="API key for --base-url or OpenAI "
                        "(default: $OPENAI_API_KEY)")
    parser.add_argument("--model", default="text-embedding-3-small", help="embedding model")
    parser.add_argument("--chat-model", default="gpt-4o-mini", help="chat model")
    parser.add_argument("--local", action="store_true",
                        help="use the local upstream even when OPENAI_API_KEY is set")
    parser.add_argument("--transport", default="httpx2", help="httpx2 (default) or httpx")
    parser.add_argument("--calls", type=positive_int,
                        help="sequential calls per client (default 100; 10 for a remote API)")
    parser.add_argument("--requests", type=positive_int,
                        help="requests per benchmark run (default 200; 20 for a remote API)")
    parser.add_argument("--concurrency", type=concurrency_list,
                        help="comma-separated concurrencies (default 1,8,32; 1,4 for a "
                        "remote API)")
    parser.add_argument("--verbose", action="store_true", help="show rag-llm's log events")
    args = parser.parse_args(argv)
    if args.local and (args.base_url or args.api_key):
        parser.error("--local cannot be combined with --base-url or --api-key")
    return args


def resolve_options(args: argparse.Namespace, remote: bool) -> Options:
    return Options(
        calls=args.calls or (10 if remote else 100),
        requests=args.requests or (20 if remote else 200),
        concurrency=args.concurrency or ((1, 4) if remote else (1, 8, 32)),
    )


def remote_target(args: argparse.Namespace) -> Target | None:
    """The remote API the arguments and environment name, or None for the local upstream."""
    if args.local:
        return None
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    if args.base_url is None and api_key is None:
        return None
    return Target(base_url=args.base_url or OPENAI_BASE_URL, api_key=api_key, verify=None,
                  embedding_model=args.model, chat_model=args.chat_model,
                  transport=args.transport)


@contextlib.contextmanager
def local_target(args: argparse.Namespace) -> Iterator[Target]:
    try:
        from rag_llm.testing import UpstreamServer
    except ImportError as exc:
        raise UsageError(f"the local upstream needs the testing extra ({exc}): "
                         "pip install 'rag-llm[testing]', or pass --base-url") from None
    with UpstreamServer(tls=True, api_key=LOCAL_API_KEY) as server:
        yield Target(base_url=server.base_url, api_key=LOCAL_API_KEY,
                     verify=server.ca_cert_path, embedding_model=args.model,
                     chat_model=args.chat_model, transport=args.transport, server=server)


def validate(target: Target) -> None:
    """Build (and close, unused) one provider of each kind: raises ConfigError early."""
    embedding_provider(target).close()
    chat_provider(target).close()


def run(args: argparse.Namespace) -> int:
    remote = remote_target(args)
    options = resolve_options(args, remote is not None)
    target_context: contextlib.AbstractContextManager[Target] = (
        contextlib.nullcontext(remote) if remote else local_target(args))
    with target_context as target:
        validate(target)
        describe(target, options)
        return asyncio.run(run_checks(target, options))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(level="info" if args.verbose else "warning")
    try:
        return run(args)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
