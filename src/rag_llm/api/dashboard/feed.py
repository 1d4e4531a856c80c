"""The dashboard's frame: every pool's figures at one moment, as a JSON-ready dict.

A frame holds cumulative counters (requests, errors, connections opened, pool-wait count
and sum) and current values (connections held, requests waiting, latency percentiles over
each client's last calls). Readers compute rates from two consecutive frames, dividing by
the difference of their ``time``. Pools that share a provider name are summed
(:func:`~rag_llm.pool.merge_pools`), as in the Prometheus exporter, so each (provider,
client) appears once. Providers are labelled by their name; no URL is included and error
text is scrubbed of credentials.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Final

from prometheus_client.core import Metric

from rag_llm.observability.events import scrub_text
from rag_llm.observability.stats import percentile
from rag_llm.pool import ClientSnapshot, PoolSnapshot, merge_pools

__all__ = ["FRAME_VERSION", "PERCENTILES", "dashboard_frame", "encode_event", "work_frame"]

FRAME_VERSION: Final = 1
PERCENTILES: Final = (50, 95, 99)
_CLIENT_ORDER: Final = ("sync", "async")
_WORK_FAMILIES: Final = ("rag_llm_embed_", "rag_llm_quer", "rag_llm_documents", "rag_llm_chunks")
# user:password@ in a URL, and credential-named query parameters.
_URL_USERINFO: Final = re.compile(r"(?<=://)[^\s/@]+@")
_QUERY_SECRET: Final = re.compile(
    r"([?&](?:api[-_]?key|key|token|access_token|sig|signature|secret|password)=)[^&\s\"']+",
    re.I,
)


def _scrub(text: str) -> str:
    text = _URL_USERINFO.sub("***@", text)
    return scrub_text(_QUERY_SECRET.sub(r"\1***", text))


def _client_frame(snapshot: ClientSnapshot) -> dict[str, Any]:
    s = snapshot.stats
    ordered = sorted(s.recent_latencies)
    latency: dict[str, Any] = {f"p{q}": percentile(ordered, q) for q in PERCENTILES}
    latency["samples"] = len(ordered)
    requests = s.requests_total
    return {
        "client": snapshot.client,
        "library": snapshot.library,
        "open": snapshot.open,
        "active": snapshot.active,
        "idle": snapshot.idle,
        "waiting": s.requests_waiting,
        "connections_opened": s.connections_opened,
        # Connection figures are a model's estimate, not a count (pyreqwest).
        "connections_estimated": s.connections_estimated,
        "connections_closed": sum(s.connections_closed.values()),
        "closed_by_reason": dict(sorted(s.connections_closed.items())),
        "requests": requests,
        "errors": sum(s.errors.values()),
        "errors_by_type": dict(sorted(s.errors.items())),
        "resent": s.resent,
        "reuse_ratio": requests / s.connections_opened if s.connections_opened else None,
        "pool_wait_count": s.pool_wait.count,
        "pool_wait_sum": s.pool_wait.sum,
        "latency": latency,
        "last_error": _scrub(s.last_error) if s.last_error else None,
        "last_error_at": s.last_error_at,
        "last_success_at": s.last_success_at,
    }


def _provider_frame(merged: PoolSnapshot, pools: int) -> dict[str, Any]:
    clients = sorted(merged.clients, key=lambda c: (
        _CLIENT_ORDER.index(c.client) if c.client in _CLIENT_ORDER else len(_CLIENT_ORDER),
        c.client))
    frames = [_client_frame(c) for c in clients]
    failed = [c for c in frames if c["last_error_at"] is not None]
    latest = max(failed, key=lambda c: c["last_error_at"], default=None)
    return {
        "provider": merged.provider,
        "transport": merged.transport,
        "state": merged.state,
        "pools": pools,
        "max_connections": merged.max_connections,
        "max_keepalive_connections": merged.max_keepalive_connections,
        "keepalive_expiry": merged.keepalive_expiry,
        "last_error": latest["last_error"] if latest else None,
        "last_error_at": latest["last_error_at"] if latest else None,
        "clients": frames,
    }


def work_frame(families: Iterable[Metric]) -> dict[str, Any]:
    """The service's own work, from rag-llm's metric families (one process's, or every
    worker's added up): cumulative embedder calls, texts and seconds per embedder, queries
    and their retrieval and answer seconds, and the store's size (None until seen)."""
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families if family.name.startswith(_WORK_FAMILIES)
               for s in family.samples}

    def value(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return samples.get((name, labels), 0.0)

    embedders = []
    for (name, labels) in sorted(samples):
        if name == "rag_llm_embed_calls_total":
            where = dict(labels)
            embedders.append({
                "embedder": where["embedder"], "where": where["where"],
                "calls": int(value(name, labels)),
                "errors": int(value("rag_llm_embed_errors_total", labels)),
                "texts": int(value("rag_llm_embed_texts_total", labels)),
                "seconds": value("rag_llm_embed_duration_seconds_sum", labels)})
    by_mode = {dict(labels)["mode"]: int(v) for (name, labels), v in sorted(samples.items())
               if name == "rag_llm_queries_total"}
    documents = samples.get(("rag_llm_documents", ()))
    chunks = samples.get(("rag_llm_chunks", ()))
    return {
        "embedders": embedders,
        "queries": {"count": sum(by_mode.values()), "by_mode": by_mode,
                    "retrieval_seconds": value("rag_llm_query_retrieval_seconds_sum"),
                    "answer_seconds": value("rag_llm_query_answer_seconds_sum")},
        "documents": None if documents is None else int(documents),
        "chunks": None if chunks is None else int(chunks),
    }


def dashboard_frame(snapshots: Iterable[PoolSnapshot], now: float | None = None, *,
                    workers: dict[str, Any] | None = None,
                    work: dict[str, Any] | None = None) -> dict[str, Any]:
    """The frame of ``snapshots``: per provider and client, counters and latency percentiles.

    ``workers`` (``{"count": N, "pids": [...]}``, when several worker processes serve and
    ``snapshots`` holds all their pools) and ``work`` (:func:`work_frame`) are added to the
    frame as they are.

    >>> dashboard_frame([])["providers"]
    []
    """
    named = [replace(s, provider=_scrub(s.provider)) for s in snapshots]
    pools = Counter(s.provider for s in named)
    merged = sorted(merge_pools(named), key=lambda m: m.provider)
    frame = {
        "version": FRAME_VERSION,
        "time": time.time() if now is None else now,
        "providers": [_provider_frame(m, pools[m.provider]) for m in merged],
    }
    if workers is not None:
        frame["workers"] = workers
    if work is not None:
        frame["work"] = work
    return frame


def encode_event(frame: dict[str, Any]) -> str:
    """``frame`` as one server-sent event: a single ``data:`` line and a blank line."""
    return f"data: {json.dumps(frame, separators=(',', ':'), allow_nan=False)}\n\n"
