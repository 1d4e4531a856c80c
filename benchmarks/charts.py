"""PNG charts of a run (matplotlib, headless): throughput, latency percentiles, RTT, CPU."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.results import Index

__all__ = ["write_charts"]


def _color(client: str, clients: Mapping[str, Mapping[str, Any]]) -> Any:
    """The same colour for a client in every chart; 20 distinct ones (tab20)."""
    import matplotlib

    names = list(clients)
    position = names.index(client) if client in names else len(names)
    return matplotlib.colormaps["tab20"](position % 20)


def _style(client: str, clients: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    rag = clients.get(client, {}).get("rag_llm", False)
    return {"linewidth": 2.4 if rag else 1.3, "linestyle": "-" if rag else "--",
            "marker": "o" if rag else ".", "color": _color(client, clients)}


def _series(index: Index, scenario: str, client: str, metric: str, xs: Sequence[int],
            field: str = "concurrency") -> tuple[list[int], list[float], list[list[float]]]:
    points: list[int] = []
    values: list[float] = []
    errors: list[list[float]] = [[], []]
    for x in xs:
        where: dict[str, Any] = {field: x, "scheme": "https"}
        median = index.get(scenario, client, metric, **where)
        if math.isnan(median):
            continue
        low = index.get(scenario, client, metric, stat="min", **where)
        high = index.get(scenario, client, metric, stat="max", **where)
        points.append(x)
        values.append(median)
        errors[0].append(max(median - low, 0.0))
        errors[1].append(max(high - median, 0.0))
    return points, values, errors


def _by_concurrency(plt: Any, index: Index, clients: Mapping[str, Mapping[str, Any]],
                    scenario: str, metric: str, ylabel: str, title: str, path: Path,
                    log_y: bool = False) -> Path | None:
    xs = index.values(scenario, "concurrency")
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for client in index.clients(scenario):
        points, values, errors = _series(index, scenario, client, metric, xs)
        if points:
            ax.errorbar(points, values, yerr=errors, label=client, capsize=3,
                        **_style(client, clients))
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _percentiles(plt: Any, index: Index, clients: Mapping[str, Mapping[str, Any]],
                 path: Path) -> Path | None:
    xs = index.values("throughput", "concurrency")
    if not xs:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), sharey=True)
    for ax, metric in zip(axes, ("p50_ms", "p90_ms", "p99_ms"), strict=True):
        for client in index.clients("throughput"):
            points, values, _ = _series(index, "throughput", client, metric, xs)
            if points:
                ax.plot(points, values, label=client, **_style(client, clients))
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_yscale("log")
        ax.set_title(f"{metric.removesuffix('_ms')} latency (ms), HTTPS")
        ax.set_xlabel("concurrency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (median over repeats)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _by_rtt(plt: Any, index: Index, clients_info: Mapping[str, Mapping[str, Any]],
            path: Path) -> Path | None:
    rtts = index.values("latency", "rtt_ms")
    clients = index.clients("latency")
    if not rtts or not clients:
        return None
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(clients)
    for i, client in enumerate(clients):
        values = [index.get("latency", client, "p50_ms", rtt_ms=r, scheme="https")
                  for r in rtts]
        positions = [j + i * width for j in range(len(rtts))]
        ax.bar(positions, [0 if math.isnan(v) else v for v in values], width, label=client,
               hatch="//" if client == "httpx-new" else None,
               color=_color(client, clients_info))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rtts))],
                  [f"RTT {r} ms" for r in rtts])
    ax.set_ylabel("p50 latency at c=1 (ms)")
    ax.set_title("Pooled vs a new client per request (httpx-new), HTTPS, by round trip")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_charts(out_dir: Path, results: Mapping[str, Any]) -> list[Path]:
    """Every chart the run has data for; none (and no error) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    index = Index(results["summary"])
    clients = results["clients"]
    made = [
        _by_concurrency(plt, index, clients, "throughput", "rps", "requests / s",
                        "Throughput, async, pooled, HTTPS (median, min-max bars)",
                        out_dir / "throughput.png"),
        _percentiles(plt, index, clients, out_dir / "latency_percentiles.png"),
        _by_rtt(plt, index, clients, out_dir / "latency_by_rtt.png"),
        _by_concurrency(plt, index, clients, "throughput", "cpu_ms_per_req",
                        "client CPU ms / request", "Client CPU per request, HTTPS",
                        out_dir / "cpu_per_request.png", log_y=True),
        _by_concurrency(plt, index, clients, "sync", "rps", "requests / s",
                        "Sync clients in threads, pooled, HTTPS", out_dir / "sync.png"),
    ]
    return [path for path in made if path is not None]
