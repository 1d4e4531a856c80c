"""Prometheus metrics, read from the pools' statistics at scrape time.

Nothing is counted twice: the collector turns :class:`~rag_llm.pool.PoolSnapshot` values
into metric families whenever Prometheus scrapes. Pools that share a provider name are
summed, so each label set appears once. Labels carry the provider's name, the client
(``sync``/``async``), the operation and bounded outcomes, never a URL or a secret.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from rag_llm.observability.events import scrub_text
from rag_llm.observability.stats import HistogramSnapshot
from rag_llm.pool import PoolSnapshot, all_snapshots

__all__ = ["CONTENT_TYPE", "PoolCollector", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class _Merged:
    """One (provider, client)'s figures, summed over every pool with that name."""

    opened: int = 0
    closed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    active: int = 0
    idle: int = 0
    waiting: int = 0
    resent: int = 0
    requests: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    histograms: dict[tuple[str, str], HistogramSnapshot] = field(default_factory=dict)
    concurrency_limit: int | None = None

    def add_histogram(self, name: str, operation: str, value: HistogramSnapshot) -> None:
        key = (name, operation)
        old = self.histograms.get(key)
        self.histograms[key] = value if old is None else HistogramSnapshot(
            value.buckets,
            tuple(a + b for a, b in zip(old.counts, value.counts, strict=True)),
            old.count + value.count,
            old.sum + value.sum,
        )


def _merge(snapshots: Iterable[PoolSnapshot]) -> tuple[dict[tuple[str, str], _Merged],
                                                        dict[str, PoolSnapshot]]:
    merged: dict[tuple[str, str], _Merged] = defaultdict(_Merged)
    limits: dict[str, PoolSnapshot] = {}
    for snapshot in snapshots:
        provider = scrub_text(snapshot.provider)
        if snapshot.state != "closed":
            limits[provider] = snapshot
        for client in snapshot.clients:
            m, s = merged[(provider, client.client)], client.stats
            m.opened += s.connections_opened
            for reason, count in s.connections_closed.items():
                m.closed[reason] += count
            m.active += client.active
            m.idle += client.idle
            m.waiting += s.requests_waiting
            m.resent += s.resent
            if s.concurrency_limit is not None:
                m.concurrency_limit = (m.concurrency_limit or 0) + s.concurrency_limit
            for key, count in s.requests.items():
                m.requests[key] += count
            for error, count in s.errors.items():
                m.errors[error] += count
            m.add_histogram("pool_wait", "", s.pool_wait)
            m.add_histogram("connect", "", s.connect)
            m.add_histogram("tls", "", s.tls)
            m.add_histogram("ttft", "", s.time_to_first_token)
            for operation, histogram in s.latency.items():
                m.add_histogram("latency", operation, histogram)
    return merged, limits


def _histogram(family: HistogramMetricFamily, labels: list[str],
               value: HistogramSnapshot) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip((*value.buckets, float("inf")), value.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family.add_metric(labels, buckets, value.sum)


class PoolCollector:
    """A prometheus_client collector over every live pool (or ``source``'s snapshots)."""

    def __init__(self, source: Callable[[], list[PoolSnapshot]] = all_snapshots) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        merged, limits = _merge(self._source())
        pc = ["provider", "client"]
        opened = CounterMetricFamily("rag_llm_connections_opened",
                                     "TCP connections opened by the pool", labels=pc)
        closed = CounterMetricFamily("rag_llm_connections_closed",
                                     "Connections closed, by reason", labels=[*pc, "reason"])
        pool = GaugeMetricFamily("rag_llm_pool_connections",
                                 "Connections held now, by state", labels=[*pc, "state"])
        waiting = GaugeMetricFamily("rag_llm_pool_requests_waiting",
                                    "Requests waiting for a pooled connection", labels=pc)
        limit = GaugeMetricFamily("rag_llm_concurrency_limit",
                                  "Adaptive concurrency limit (adaptive_concurrency on)",
                                  labels=pc)
        resent = CounterMetricFamily("rag_llm_requests_resent",
                                     "Requests resent after a stale keep-alive connection",
                                     labels=pc)
        requests = CounterMetricFamily("rag_llm_requests", "Calls by operation and outcome",
                                       labels=[*pc, "operation", "outcome"])
        errors = CounterMetricFamily("rag_llm_request_errors", "Failed calls by error type",
                                     labels=[*pc, "error"])
        histograms = {
            "pool_wait": HistogramMetricFamily(
                "rag_llm_pool_wait_seconds", "Time waiting for a pooled connection", labels=pc),
            "connect": HistogramMetricFamily(
                "rag_llm_connect_seconds", "Time to open a connection", labels=pc),
            "tls": HistogramMetricFamily(
                "rag_llm_tls_handshake_seconds", "TLS handshake time", labels=pc),
            "ttft": HistogramMetricFamily(
                "rag_llm_time_to_first_token_seconds", "Streamed calls: time to first token",
                labels=pc),
            "latency": HistogramMetricFamily(
                "rag_llm_request_duration_seconds", "Call duration by operation",
                labels=[*pc, "operation"]),
        }
        for (provider, client), m in sorted(merged.items()):
            labels = [provider, client]
            opened.add_metric(labels, m.opened)
            for reason, count in sorted(m.closed.items()):
                closed.add_metric([*labels, reason], count)
            pool.add_metric([*labels, "active"], m.active)
            pool.add_metric([*labels, "idle"], m.idle)
            waiting.add_metric(labels, m.waiting)
            resent.add_metric(labels, m.resent)
            if m.concurrency_limit is not None:
                limit.add_metric(labels, m.concurrency_limit)
            for (operation, outcome), count in sorted(m.requests.items()):
                requests.add_metric([*labels, operation, outcome], count)
            for error, count in sorted(m.errors.items()):
                errors.add_metric([*labels, error], count)
            for (name, operation), value in sorted(m.histograms.items()):
                _histogram(histograms[name], labels + ([operation] if operation else []), value)
        max_connections = GaugeMetricFamily("rag_llm_pool_max_connections",
                                            "Configured max_connections", labels=["provider"])
        max_keepalive = GaugeMetricFamily("rag_llm_pool_max_keepalive_connections",
                                          "Configured max_keepalive_connections",
                                          labels=["provider"])
        for provider, snapshot in sorted(limits.items()):
            max_connections.add_metric([provider], snapshot.max_connections)
            max_keepalive.add_metric([provider], snapshot.max_keepalive_connections)
        yield from (opened, closed, pool, waiting, limit, resent, requests, errors,
                    *histograms.values(), max_connections, max_keepalive)


def render_metrics(source: Callable[[], list[PoolSnapshot]] = all_snapshots) -> bytes:
    """The Prometheus text exposition of every live pool."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(source))
    return generate_latest(registry)
