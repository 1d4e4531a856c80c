"""The markdown report: medians with their spread, and ratios against peers of the same run."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.results import Index

__all__ = ["best_transport", "render", "write_report"]

# Not "peers" in ratios: the floor is a reference, httpx-new is the pattern being replaced.
_REFERENCES: Final = frozenset({"floor", "httpx-new"})
_DASH: Final = "\u2013"  # en dash, between min and max
# HTTP/2 against HTTP/1.1: (HTTP/2 client, HTTP/1.1 client, what differs between them).
_HTTP2_PAIRS: Final = (
    ("ragllm-h2", "ragllm-httpx2", "rag-llm, httpx2 both: h2 / h1"),
    ("httpx2-h2", "httpx2", "bare httpx2: h2 / h1"),
    ("ragllm-h2", "ragllm-auto", "rag-llm: h2 / default (aiohttp h1)"),
    ("ragllm-pyreqwest-h2", "ragllm-pyreqwest", "rag-llm, pyreqwest both: h2 / h1"),
    ("pyreqwest-h2", "pyreqwest", "bare pyreqwest: h2 / h1"),
    ("ragllm-pyreqwest-h2", "ragllm-auto", "rag-llm: pyreqwest h2 / default (aiohttp h1)"),
    ("ragllm-pyreqwest-h2", "ragllm-h2", "rag-llm h2: pyreqwest / httpx2"),
)


def _num(value: float, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _with_spread(index: Index, scenario: str, client: str, metric: str, digits: int,
                 **params: Any) -> str:
    median = index.get(scenario, client, metric, **params)
    if math.isnan(median):
        entry = index.entry(scenario, client, **params)
        if entry is not None and entry["error_samples"]:
            return "error"
        return "n/a"
    low = index.get(scenario, client, metric, stat="min", **params)
    high = index.get(scenario, client, metric, stat="max", **params)
    return f"{_num(median, digits)} [{_num(low, digits)}{_DASH}{_num(high, digits)}]"


def _ratio(mine: float, theirs: float) -> str:
    if math.isnan(mine) or math.isnan(theirs) or theirs == 0:
        return "n/a"
    return f"{mine / theirs:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class _Report:
    def __init__(self, results: Mapping[str, Any]) -> None:
        self.results = results
        self.index = Index(results["summary"])
        self.clients: Mapping[str, Mapping[str, Any]] = results["clients"]

    def peers(self, scenario: str) -> list[str]:
        return [c for c in self.index.clients(scenario)
                if not self.clients.get(c, {}).get("rag_llm") and c not in _REFERENCES]

    def best_peer(self, scenario: str, metric: str, higher: bool, **params: Any) -> tuple[
            str, float]:
        scored = [(self.index.get(scenario, c, metric, **params), c)
                  for c in self.peers(scenario)]
        scored = [(v, c) for v, c in scored if not math.isnan(v)]
        if not scored:
            return "n/a", math.nan
        value, client = max(scored) if higher else min(scored)
        return client, value

    def metric_tables(self, scenario: str, metric: str, columns: Sequence[tuple[str, dict[
            str, Any]]], digits: int, higher: bool, reference: str | None) -> str:
        clients = self.index.clients(scenario)
        rows = [[f"`{c}`", *(_with_spread(self.index, scenario, c, metric, digits, **p)
                             for _, p in columns)] for c in clients]
        out = [_table(["client", *(h for h, _ in columns)], rows)]
        ratio_rows = []
        for client in clients:
            row = [f"`{client}`"]
            for _, params in columns:
                mine = self.index.get(scenario, client, metric, **params)
                best, best_value = self.best_peer(scenario, metric, higher, **params)
                cell = f"{_ratio(mine, best_value)} ({best})" if best != "n/a" else "n/a"
                if reference is not None:
                    base = self.index.get(scenario, reference, metric, **params)
                    cell = f"{_ratio(mine, base)} / {cell}"
                row.append(cell)
            ratio_rows.append(row)
        what = ("higher is better" if higher else "lower is better")
        title = (f"Ratio of medians ({what}): vs `{reference}` / vs the best peer"
                 if reference else f"Ratio of medians ({what}) vs the best peer")
        out += ["", f"{title}:", "", _table(["client", *(h for h, _ in columns)], ratio_rows)]
        return "\n".join(out)

    # -- sections -------------------------------------------------------------------------

    def header(self) -> str:
        meta = self.results["meta"]
        plan = self.results["plan"]
        pin = (f"client processes pinned to CPU {meta['client_cpu']}, nginx (taskset), the "
               f"proxy and the runner to CPU {meta['server_cpu']}" if meta["pinned"]
               else "no CPU pinning")
        rows = [[f"`{name}`", info["mode"], info["description"], str(info.get("version") or ""),
                 "yes" if info.get("available") else f"no: {info.get('error') or 'not run'}"]
                for name, info in self.clients.items()]
        lines = [
            "# rag-llm benchmark report",
            "",
            f"`{meta['command']}` (plan `{plan['name']}`), started {meta['started']}, "
            f"{meta['duration_s']} s. Python {meta['python']}, {meta['cpus']} CPUs, "
            f"{meta['platform']}; nginx {meta['nginx']} on 127.0.0.1 (1 worker); {pin}; "
            f"{meta['event_loop']} event loop. rag-llm transports: "
            f"{', '.join(meta['transports'])}.",
            "",
            f"Every cell ran {plan['repeats']} times, interleaved across clients; values are "
            "the median [min-max] over repeats. Same request body and same parsing (JSON into "
            "a list of 1,536 floats) for every client. Absolute numbers vary with the machine's "
            "load; compare ratios within this run.",
            "",
            _table(["client", "mode", "what", "version", "measured"], rows),
        ]
        return "\n".join(lines)

    def proxy(self) -> str:
        if not self.index.clients("proxy"):
            return ""
        rows = []
        for client in self.index.clients("proxy"):
            direct = self.index.get("proxy", client, "p50_ms", via_proxy=False)
            proxied = self.index.get("proxy", client, "p50_ms", via_proxy=True)
            rows.append([f"`{client}`", _num(direct, 3), _num(proxied, 3),
                         _num(proxied - direct, 3)])
        return "\n".join([
            "## Latency proxy overhead (RTT 0, HTTPS, c=1)", "",
            "Every RTT > 0 cell goes through the proxy; its own cost at RTT 0 is below "
            "(p50, ms). Sleep granularity of its event loop adds up to about 1 ms per direction "
            "at RTT > 0, equally for every client (the floor included).", "",
            _table(["client", "direct p50", "via proxy p50", "overhead"], rows),
        ])

    def latency(self) -> str:
        rtts = self.index.values("latency", "rtt_ms")
        if not rtts:
            return ""
        columns = [(f"RTT {rtt} ms", {"rtt_ms": rtt, "scheme": "https"}) for rtt in rtts]
        p99 = [[f"`{c}`", *(_num(self.index.get("latency", c, "p99_ms", **p), 2)
                           for _, p in columns)] for c in self.index.clients("latency")]
        return "\n".join([
            "## Latency at concurrency 1 (HTTPS): pooled vs a new client per request", "",
            "p50 in ms. `floor` is raw asyncio streams with a prebuilt request (one RTT plus "
            "server time plus parsing); `httpx-new` builds an `httpx.AsyncClient()` per "
            "request, with a fresh SSL context from the CA bundle as httpx does.", "",
            self.metric_tables("latency", "p50_ms", columns, 2, higher=False,
                               reference="floor"),
            "", "p99 (ms):", "", _table(["client", *(h for h, _ in columns)], p99),
        ])

    def throughput(self) -> str:
        concurrencies = self.index.values("throughput", "concurrency")
        if not concurrencies:
            return ""
        columns = [(f"c={c}", {"concurrency": c, "scheme": "https"}) for c in concurrencies]
        parts = [
            "## Throughput (async, pooled, HTTPS, RTT 0)", "",
            "Requests per second.", "",
            self.metric_tables("throughput", "rps", columns, 0, higher=True,
                               reference="aiohttp"),
            "", "### Latency under load: p50 / p99 (ms)", "",
            _table(["client", *(h for h, _ in columns)], [
                [f"`{c}`", *(f"{_num(self.index.get('throughput', c, 'p50_ms', **p), 1)} / "
                             f"{_num(self.index.get('throughput', c, 'p99_ms', **p), 1)}"
                             for _, p in columns)]
                for c in self.index.clients("throughput")]),
            "", "### Client CPU time per request (ms, user + system)", "",
            self.metric_tables("throughput", "cpu_ms_per_req", columns, 2, higher=False,
                               reference="aiohttp"),
            "", "### Connections opened per cell and requests per connection", "",
            "New connections counted at nginx over warm-up and measurement (a client that "
            "keeps its pool across cells, as LiteLLM's process-wide cache does, opens none); "
            "in brackets, requests per connection used.", "",
            _table(["client", *(h for h, _ in columns)], [
                [f"`{c}`", *(f"{_num(self.index.get('throughput', c, 'connections', **p), 0)}"
                             f" ({_num(self.index.get('throughput', c, 'requests_per_connection', **p), 0)})"  # noqa: E501
                             for _, p in columns)]
                for c in self.index.clients("throughput")]),
        ]
        return "\n".join(parts)

    def http2(self) -> str:
        clients = self.index.clients("http2")
        if not clients:
            return ""
        entries = [e for e in self.results["summary"] if e["scenario"] == "http2"]
        concurrencies = sorted({e["concurrency"] for e in entries if e["rtt_ms"] == 0})
        rtts = sorted({e["rtt_ms"] for e in entries if e["concurrency"] == 1})
        by_c = [(f"c={c}", {"concurrency": c, "rtt_ms": 0}) for c in concurrencies]
        by_rtt = [(f"RTT {r} ms", {"concurrency": 1, "rtt_ms": r}) for r in rtts]

        def table(metric: str, columns: Sequence[tuple[str, dict[str, Any]]],
                  digits: int) -> str:
            return _table(["client", *(h for h, _ in columns)], [
                [f"`{c}`", *(_with_spread(self.index, "http2", c, metric, digits, **p)
                             for _, p in columns)] for c in clients])

        def protocol(client: str) -> str:
            share = self.index.get("http2", client, "http2_share", concurrency=max(
                concurrencies, default=1), rtt_ms=0)
            if math.isnan(share):
                return "n/a"
            return {0.0: "HTTP/1.1", 1.0: "HTTP/2"}.get(share, f"{share:.0%} HTTP/2")

        connections = _table(["client", "protocol", *(h for h, _ in by_c)], [
            [f"`{c}`", protocol(c),
             *(f"{_num(self.index.get('http2', c, 'connections', **p), 0)}"
               f" ({_num(self.index.get('http2', c, 'requests_per_connection', **p), 0)})"
               for _, p in by_c)] for c in clients])
        ratio_rows = []
        points = ([("req/s", "rps", h, p) for h, p in by_c]
                  + [("CPU ms/req", "cpu_ms_per_req", h, p) for h, p in by_c]
                  + [("p50 c=1", "p50_ms", h, p) for h, p in by_rtt])
        pairs = [(h2, h1, what) for h2, h1, what in _HTTP2_PAIRS
                 if h2 in clients and h1 in clients]
        for label, metric, where, params in points:
            ratio_rows.append([f"{label} {where}", *(_ratio(
                self.index.get("http2", h2, metric, **params),
                self.index.get("http2", h1, metric, **params)) for h2, h1, _ in pairs)])
        meta = self.results["meta"]
        streams = meta.get("nginx_http2_streams")
        nginx = ("HTTPS port offers h2 and http/1.1 by ALPN"
                 + (f", at most {streams} streams per connection" if streams else "")
                 if meta.get("nginx_http2", True) else
                 "**this nginx has no HTTP/2 module: every client spoke HTTP/1.1**")
        return "\n".join([
            "## HTTP/2 vs HTTP/1.1 keep-alive (HTTPS)", "",
            f"nginx: {nginx}. `ragllm-h2` is rag-llm "
            "with `http2: true` (transport `auto`, hence httpx2 with h2) and `ragllm-httpx2` the "
            "same transport over HTTP/1.1, so that only the protocol differs; `httpx2-h2` and "
            "`httpx2` the same for the bare library; `ragllm-pyreqwest-h2` and "
            "`ragllm-pyreqwest`, `pyreqwest-h2` and `pyreqwest` the same pairs on pyreqwest "
            "(hyper's h2); `ragllm-auto` is the async default (aiohttp, HTTP/1.1). Pools: 100 "
            "connections at most (HTTP/1.1), 100 streams on one connection (httpx2's h2 "
            "setting; on pyreqwest, 100 calls in flight). Protocol: what nginx logged.", "",
            "Requests per second, RTT 0:", "", table("rps", by_c, 0), "",
            "p50 latency at c=1 (ms), by emulated RTT:", "", table("p50_ms", by_rtt, 2), "",
            "p99 latency under load (ms), RTT 0:", "", table("p99_ms", by_c, 1), "",
            "Client CPU per request (ms, user + system), RTT 0:", "",
            table("cpu_ms_per_req", by_c, 3), "",
            "Connections opened per cell (warm-up included) and, in brackets, requests per "
            "connection, RTT 0:", "", connections, "",
            "Ratio of medians (req/s: higher is better for the first client; CPU and p50: "
            "lower is):", "",
            _table(["measure", *(f"{what} (`{h2}` / `{h1}`)" for h2, h1, what in pairs)],
                   ratio_rows),
        ])

    def sync(self) -> str:
        concurrencies = self.index.values("sync", "concurrency")
        if not concurrencies:
            return ""
        columns = [(f"c={c}", {"concurrency": c, "scheme": "https"}) for c in concurrencies]
        return "\n".join([
            "## Sync path (threads, pooled, HTTPS, RTT 0)", "",
            "Requests per second; one client shared by all threads.", "",
            self.metric_tables("sync", "rps", columns, 0, higher=True,
                               reference="httpx-sync"),
            "", "Client CPU per request (ms):", "",
            self.metric_tables("sync", "cpu_ms_per_req", columns, 2, higher=False,
                               reference="httpx-sync"),
        ])

    def memory(self) -> str:
        clients = self.index.clients("memory")
        if not clients:
            return ""
        rows = [[f"`{c}`",
                 _with_spread(self.index, "memory", c, "rss_kb_per_conn", 1),
                 _with_spread(self.index, "memory", c, "py_kb_per_conn", 1),
                 _num(self.index.get("memory", c, "held"), 0)] for c in clients]
        wanted = self.results["plan"]["memory_connections"]
        return "\n".join([
            "## Memory per open connection (HTTPS)", "",
            f"One request, then {wanted} at once; the growth in RSS and in Python heap "
            "(tracemalloc) between the two, divided by the connections the client added and "
            "keeps idle (open sockets in its process). A pool that keeps fewer idle "
            "connections than requests in flight adds fewer. Measured first in each client's "
            "process, with freed heap returned to the OS (malloc_trim) before the baseline. "
            "n/a for the Python heap of LiteLLM: its process-wide client cache reuses the "
            "connections of the RSS pass.",
            "",
            _table(["client", "RSS KiB / conn", "Python heap KiB / conn", "connections added"],
                   rows),
        ])

    def imports(self) -> str:
        modules = self.index.clients("import")
        if not modules:
            return ""
        rows = [[f"`{m}`", _with_spread(self.index, "import", m, "import_ms", 0),
                 _with_spread(self.index, "import", m, "wall_ms", 0)] for m in modules]
        return "\n".join([
            "## Import time (fresh interpreter)", "",
            "`-X importtime` cumulative ms of the top-level module, and wall-clock ms of "
            "`python -c 'import X'` minus `python -c pass`. LiteLLM with "
            "`LITELLM_LOCAL_MODEL_COST_MAP=True` (no network fetch at import).", "",
            _table(["module", "import ms", "wall ms"], rows),
        ])

    def targets(self) -> str:
        rows = [[t["target"], f"`{t['client']}`", t["measured"], t["goal"],
                 {True: "met", False: "**not met**", None: "not measured"}[t["met"]]]
                for t in self.results["targets"]]
        async_best, sync_best = best_transport(self.results)
        return "\n".join([
            "## Targets (reported, not asserted)", "",
            f"Fastest rag-llm transport in this run: async **{async_best}**, sync "
            f"**{sync_best}** (by median req/s at c=16, or the highest concurrency measured).", "",
            _table(["target", "client", "measured", "goal", "status"], rows),
        ])

    def errors(self) -> str:
        rows = []
        for entry in self.results["summary"]:
            if entry["failed"] or entry["request_errors"]:
                where = (f"{entry['scenario']} {entry['scheme']} rtt={entry['rtt_ms']} "
                         f"c={entry['concurrency']}")
                rows.append([f"`{entry['client']}`", where, str(entry["failed"]),
                             str(entry["request_errors"]),
                             "; ".join(entry["error_samples"])[:200].replace("|", "/")])
        if not rows:
            return ""
        return "\n".join(["## Errors", "",
                          _table(["client", "cell", "failed repeats", "failed requests",
                                  "first errors"], rows)])


def best_transport(results: Mapping[str, Any]) -> tuple[str, str]:
    """The rag-llm transport with the most req/s, async and sync, at c=16 (else the top c)."""
    index = Index(results["summary"])
    picks = []
    for scenario, suffix in (("throughput", ""), ("sync", "-sync")):
        concurrencies = index.values(scenario, "concurrency")
        scored = []
        if concurrencies:
            for transport in results["meta"]["transports"]:
                value = index.get(scenario, f"ragllm-{transport}{suffix}", "rps",
                                  concurrency=16 if 16 in concurrencies else max(concurrencies),
                                  scheme="https")
                if not math.isnan(value):
                    scored.append((value, transport))
        picks.append(max(scored)[1] if scored else "n/a")
    return picks[0], picks[1]


def render(results: Mapping[str, Any]) -> str:
    report = _Report(results)
    sections: list[Callable[[], str]] = [report.header, report.targets, report.latency,
                                         report.proxy, report.throughput, report.http2,
                                         report.sync,
                                         report.memory, report.imports, report.errors]
    return "\n\n".join(text for text in (section() for section in sections) if text) + "\n"


def write_report(out_dir: Path, results: Mapping[str, Any]) -> Path:
    path = out_dir / "report.md"
    path.write_text(render(results), encoding="utf-8")
    return path
