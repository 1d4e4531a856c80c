"""``rag-llm top``: the dashboard's figures as a live terminal table, for hosts without a browser.

It polls ``{url}/dashboard/data`` (the same frame the page charts) and computes rates from
consecutive frames, as the page does. Needs ``rich`` (the ``server`` extra), imported only
when the view runs.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["fetch_frame", "render_frame", "run_top"]

DEFAULT_TIMEOUT: Final = 5.0
_USERINFO: Final = re.compile(r"(?<=://)[^\s/@]+@")
_MISSING: Final = "-"
# Short headers: a frame fits 80 columns.
_COLUMNS: Final = ("client", "act", "idle", "req/s", "p50", "p95", "p99", "reuse", "wait",
                   "queue", "err/s")

_Frame = Mapping[str, Any]


class _FeedError(Exception):
    """The server did not answer with a readable dashboard frame; the message says why."""


def fetch_frame(url: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The current frame from ``{url}/dashboard/data``; raises ``OSError`` or ``ValueError``."""
    endpoint = url.rstrip("/") + "/dashboard/data"
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {_USERINFO.sub('', url)!r}")
    # S310: the scheme is checked above, so no file: or ftp: URL is opened.
    with urllib.request.urlopen(endpoint, timeout=timeout) as response:  # noqa: S310
        frame = json.load(response)
    if not isinstance(frame, dict) or not isinstance(frame.get("providers"), list):
        raise ValueError("the answer is not a dashboard frame")
    return frame


def _fetch(url: str, timeout: float) -> dict[str, Any]:
    shown = _USERINFO.sub("", url.rstrip("/")) + "/dashboard/data"
    try:
        return fetch_frame(url, timeout)
    except urllib.error.HTTPError as exc:
        hint = " (is the dashboard router included in the app?)" if exc.code == 404 else ""
        raise _FeedError(f"{shown} answered HTTP {exc.code}{hint}") from None
    except urllib.error.URLError as exc:
        raise _FeedError(f"cannot reach {shown}: {exc.reason}") from None
    except TimeoutError:
        raise _FeedError(f"cannot reach {shown}: no answer in {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise _FeedError(f"cannot read {shown}: {exc}") from None


def _rate(client: _Frame, previous: _Frame | None, key: str, dt: float) -> float | None:
    if previous is None or dt <= 0:
        return None
    delta: float = client[key] - previous[key]
    return max(0.0, delta) / dt


def _mean_wait(client: _Frame, previous: _Frame | None) -> float | None:
    if previous is None:
        return None
    waits = client["pool_wait_count"] - previous["pool_wait_count"]
    return (client["pool_wait_sum"] - previous["pool_wait_sum"]) / waits if waits > 0 else None


def _num(value: float | None, digits: int = 1) -> str:
    return _MISSING if value is None else f"{value:,.{digits}f}"


def _ms(seconds: float | None) -> str:
    return _MISSING if seconds is None else f"{seconds * 1000:,.1f}"


def _used(client: _Frame) -> bool:
    return bool(client["open"] or client["requests"] or client["connections_opened"])


def _previous_clients(frame: _Frame | None) -> dict[tuple[str, str], _Frame]:
    if frame is None:
        return {}
    return {(p["provider"], c["client"]): c for p in frame["providers"] for c in p["clients"]}


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{max(0, round(seconds))} s ago"
    return f"{round(seconds / 60)} min ago" if seconds < 3600 else f"{round(seconds / 3600)} h ago"


def _provider_view(provider: _Frame, before: Mapping[tuple[str, str], _Frame], dt: float,
                   now: float) -> list[RenderableType]:
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    name = provider["provider"]
    head = Text.assemble(
        (name, "bold"), "  ",
        (f"{provider['state']} · {provider['transport']} · "
         f"max_connections {provider['max_connections']} · "
         f"max_keepalive_connections {provider['max_keepalive_connections']}", "dim"))
    parts: list[RenderableType] = [head]
    clients = [c for c in provider["clients"] if _used(c)]
    if clients:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for header in _COLUMNS:
            table.add_column(header, justify="left" if header == "client" else "right",
                             no_wrap=True)
        for client in clients:
            prev = before.get((name, client["client"]))
            latency = client["latency"]
            error_rate = _rate(client, prev, "errors", dt)
            table.add_row(
                client["client"], str(client["active"]), str(client["idle"]),
                _num(_rate(client, prev, "requests", dt)),
                _ms(latency["p50"]), _ms(latency["p95"]), _ms(latency["p99"]),
                _num(client["reuse_ratio"]), _ms(_mean_wait(client, prev)),
                str(client["waiting"]), _num(error_rate, 2),
                style="red" if error_rate else None,
            )
        parts.append(Padding(table, (0, 0, 0, 2)))
    else:
        parts.append(Text("  no calls yet", style="dim"))
    if provider["last_error"]:
        errors = sum(c["errors"] for c in provider["clients"])
        parts.append(Text(f"  last error {_ago(now - provider['last_error_at'])} "
                          f"({errors} in all): {provider['last_error']}",
                          style="red", overflow="ellipsis", no_wrap=True))
    return parts


def _per(delta: float, count: float) -> float | None:
    return delta / count if count > 0 else None


def _work_view(work: _Frame, previous: _Frame | None, dt: float) -> list[RenderableType]:
    """The service's own work: embedder calls and queries (rates and mean times over the
    last interval, or over all calls on the first frame) and the store's size."""
    from rich.text import Text

    def totals(w: _Frame | None) -> tuple[float, float, float, float, float, float]:
        if w is None:
            return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        e = w["embedders"]
        q = w["queries"]
        return (sum(x["calls"] for x in e), sum(x["texts"] for x in e),
                sum(x["seconds"] for x in e), q["count"], q["retrieval_seconds"],
                q["answer_seconds"])

    now = totals(work)
    then = totals(previous) if previous is not None and dt > 0 else (0.0,) * 6
    calls, texts, seconds, queries, retrieval, answer = (a - b for a, b in zip(
        now, then, strict=True))
    rate = (lambda n: n / dt) if previous is not None and dt > 0 else (lambda n: None)
    embedders = ", ".join(f"{e['embedder']} ({e['where']})" for e in work["embedders"])
    store = (f"{work['documents']:,} documents · {work['chunks']:,} chunks"
             if work["documents"] is not None else "store not read yet")
    return [
        Text.assemble(("this service", "bold"), "  ", (store, "dim")),
        Text(f"  embedding {_num(rate(calls))} calls/s · {_num(_per(texts, calls))} texts/call"
             f" · {_ms(_per(seconds, calls))} ms mean · {int(now[0]):,} calls"
             f"{' · ' + embedders if embedders else ''}"),
        Text(f"  queries {_num(rate(queries))}/s · retrieval {_ms(_per(retrieval, queries))} ms"
             f" · answer {_ms(_per(answer, queries))} ms · {int(now[3]):,} answered"),
    ]


def render_frame(frame: _Frame, previous: _Frame | None, source: str) -> RenderableType:
    """The view of ``frame``, with rates against ``previous`` (none on the first frame)."""
    from rich.console import Group
    from rich.text import Text

    dt = frame["time"] - previous["time"] if previous is not None else 0.0
    before = _previous_clients(previous)
    when = datetime.fromtimestamp(frame["time"]).strftime("%H:%M:%S")
    parts: list[RenderableType] = [
        Text.assemble(("rag-llm top", "bold"), f"  {source}  {when}"),
        Text("latency p50/p95/p99 and mean pool wait in ms; queue: requests waiting now",
             style="dim"),
    ]
    workers = frame.get("workers")
    if workers:  # several worker processes: the figures are their totals
        pids = ", ".join(str(pid) for pid in workers["pids"])
        parts.append(Text(f"{workers['count']} workers, figures summed (pids {pids})",
                          style="dim"))
    if frame.get("work") is not None:
        parts.append(Text())
        parts.extend(_work_view(frame["work"], None if previous is None
                                else previous.get("work"), dt))
    for provider in frame["providers"]:
        parts.append(Text())
        parts.extend(_provider_view(provider, before, dt, frame["time"]))
    if not frame["providers"]:
        parts.extend([Text(), Text("no connection pools yet", style="dim")])
    return Group(*parts)


def run_top(url: str, interval: float = 1.0, iterations: int | None = None, *,
            console: Console | None = None, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Show the pools of the service at ``url`` until Ctrl-C (or ``iterations`` frames).

    Returns 0 (Ctrl-C included), or 1 with a one-line message when the server cannot be
    reached or does not answer with a dashboard frame.
    """
    if not interval > 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    if iterations is not None and iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations!r}")
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        print("rag-llm top needs rich: pip install 'rag-llm[server]'", file=sys.stderr)
        return 1
    out = console if console is not None else Console()
    source = _USERINFO.sub("", url.rstrip("/"))

    def view(frame: _Frame, previous: _Frame | None) -> RenderableType:
        try:
            return render_frame(frame, previous, source)
        except (KeyError, TypeError, ValueError) as exc:
            raise _FeedError(f"cannot read the frame from {source} (missing or bad "
                             f"field {exc}); is rag-llm there the same version?") from None

    try:
        frame, previous = _fetch(url, timeout), None
        with Live(view(frame, None), console=out, auto_refresh=False) as live:
            shown = 1
            while iterations is None or shown < iterations:
                time.sleep(interval)
                frame, previous = _fetch(url, timeout), frame
                live.update(view(frame, previous), refresh=True)
                shown += 1
    except _FeedError as exc:
        err = console if console is not None else Console(stderr=True)
        err.print(f"rag-llm top: {exc}", style="red", soft_wrap=True, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
