"""Prometheus metrics, read from the pools' and routers' statistics at scrape time.

Nothing is counted twice: the collector turns :class:`~rag_llm.pool.PoolSnapshot` values
into metric families whenever Prometheus scrapes. Pools that share a provider name are
summed, so each label set appears once. Labels carry the provider's name, the client
(``sync``/``async``), the operation and bounded outcomes, never a URL or a secret.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from rag_llm.providers.routing import RouterSnapshot

__all__ = ["CONTENT_TYPE", "PoolCollector", "RoutingCollector", "render_metrics"]

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


def _router_snapshots() -> list[RouterSnapshot]:
    # No router exists until a provider module made one: don't import it to find none.
    routing = sys.modules.get("rag_llm.providers.routing")
    return [] if routing is None else [r.snapshot() for r in routing.live_routers()]


class RoutingCollector:
    """Endpoints, breakers, retries and local rejections of every live provider.

    Providers that share a name are summed, as the pools are: the breaker and health
    gauges count endpoints.
    """

    def __init__(self, source: Callable[[], list[RouterSnapshot]] = _router_snapshots) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        pe = ["provider", "endpoint"]
        attempts = CounterMetricFamily("rag_llm_endpoint_attempts",
                                       "Attempts sent to an endpoint, by outcome",
                                       labels=[*pe, "outcome"])
        healthy = GaugeMetricFamily("rag_llm_endpoint_healthy",
                                    "Endpoints passing their active health check", labels=pe)
        breaker = GaugeMetricFamily("rag_llm_circuit_breaker_state",
                                    "Endpoints in each circuit-breaker state",
                                    labels=[*pe, "state"])
        in_flight = GaugeMetricFamily("rag_llm_endpoint_in_flight",
                                      "Attempts in flight on an endpoint", labels=pe)
        retries = CounterMetricFamily("rag_llm_retries", "Attempts that were retried",
                                      labels=["provider"])
        gave_up = CounterMetricFamily("rag_llm_retries_refused",
                                      "Failed attempts not retried, by reason",
                                      labels=["provider", "reason"])
        rejected = CounterMetricFamily("rag_llm_calls_rejected",
                                       "Calls refused before sending (open circuit, local "
                                       "rate limit)", labels=["provider", "reason"])
        budget = GaugeMetricFamily("rag_llm_retry_budget_available",
                                   "Retries the budget would grant now", labels=["provider"])
        sums: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
        for snapshot in self._source():
            provider = scrub_text(snapshot.provider)
            for e in snapshot.endpoints:
                key = (provider, scrub_text(e.name))
                for outcome, count in e.attempts.items():
                    sums["attempts"][(*key, outcome)] += count
                sums["healthy"][key] += e.healthy
                sums["breaker"][(*key, e.breaker)] += 1
                sums["in_flight"][key] += e.in_flight
            sums["retries"][(provider,)] += snapshot.retries
            for reason, count in snapshot.gave_up.items():
                sums["gave_up"][(provider, reason)] += count
            for reason, count in snapshot.rejected.items():
                sums["rejected"][(provider, reason)] += count
            if snapshot.budget_available is not None:
                sums["budget"][(provider,)] += snapshot.budget_available
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "attempts": attempts, "healthy": healthy, "breaker": breaker,
            "in_flight": in_flight, "retries": retries, "gave_up": gave_up,
            "rejected": rejected, "budget": budget}
        for name, family in families.items():
            for labels, value in sorted(sums[name].items()):
                family.add_metric(list(labels), value)
        yield from families.values()


def render_metrics(source: Callable[[], list[PoolSnapshot]] = all_snapshots,
                   routers: Callable[[], list[RouterSnapshot]] = _router_snapshots) -> bytes:
    """The Prometheus text exposition of every live pool and provider."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(source))
    registry.register(RoutingCollector(routers))
    return generate_latest(registry)
