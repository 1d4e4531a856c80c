"""Prometheus metrics of every pool and router, read from their statistics at scrape time.

The first provider built puts rag-llm's collectors in prometheus_client's default
``REGISTRY``, so an application serving ``prometheus_client.generate_latest()`` shows them;
one that keeps its own registry hands it over with :func:`register` instead.
``render_metrics()`` is the exposition of rag-llm's metrics alone, which ``/metrics`` serves.

Nothing is counted twice: the collectors turn snapshots into metric families whenever
Prometheus scrapes. Pools and routers that share a provider name are summed, so each label
set appears once. Counters never go down in a process: those of a pool or router that has
been closed and collected are folded into totals by label, so a rebuilt provider's counters
go on from where they were. Gauges come from pools and routers not closed. Labels carry the
provider's name, the client (``sync``/``async``), the operation and bounded outcomes, never a
URL or a secret.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from rag_llm.observability.events import scrub_text
from rag_llm.observability.stats import ClientStatsSnapshot, HistogramSnapshot, merge_client_stats
from rag_llm.observability.work import WORK, WorkSnapshot
from rag_llm.pool import PoolSnapshot, all_snapshots, counted_stats, merge_pools

if TYPE_CHECKING:
    from rag_llm.calls.counts import RouterSnapshot, RoutingCounts
    from rag_llm.state import StateBackend, StateReading

__all__ = ["CONTENT_TYPE", "PoolCollector", "RoutingCollector", "StateCollector", "WorkCollector",
           "collect_metrics", "collect_work_metrics", "register", "register_default",
           "render_families", "render_metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(family: HistogramMetricFamily, labels: list[str],
               value: HistogramSnapshot) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip((*value.buckets, float("inf")), value.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family.add_metric(labels, buckets, value.sum)


def _scrubbed_stats(stats: list[ClientStatsSnapshot]) -> list[ClientStatsSnapshot]:
    return merge_client_stats(replace(s, provider=scrub_text(s.provider)) for s in stats)


def _open_pools(snapshots: list[PoolSnapshot]) -> list[PoolSnapshot]:
    return merge_pools(replace(s, provider=scrub_text(s.provider)) for s in snapshots
                       if s.state != "closed")


class PoolCollector:
    """A prometheus_client collector of every pool's connections and calls.

    Counters are read from ``counters`` (every pool the process has had), gauges and
    limits from ``pools`` (default: every live pool; closed ones show none).
    """

    def __init__(self, pools: Callable[[], list[PoolSnapshot]] = all_snapshots,
                 counters: Callable[[], list[ClientStatsSnapshot]] = counted_stats) -> None:
        self._pools = pools
        self._counters = counters

    def describe(self) -> Iterator[Metric]:
        return self._families([], [])

    def collect(self) -> Iterator[Metric]:
        return self._families(_scrubbed_stats(self._counters()), _open_pools(self._pools()))

    def _families(self, stats: list[ClientStatsSnapshot],
                  pools: list[PoolSnapshot]) -> Iterator[Metric]:
        pc = ["provider", "client"]
        opened = CounterMetricFamily("rag_llm_connections_opened",
                                     "TCP connections opened by the pool", labels=pc)
        closed = CounterMetricFamily("rag_llm_connections_closed",
                                     "Connections closed, by reason", labels=[*pc, "reason"])
        held = GaugeMetricFamily("rag_llm_pool_connections",
                                 "Connections held now, by state", labels=[*pc, "state"])
        # A transport that cannot see its connections (pyreqwest) reports a model's
        # estimate, under names of its own: never mixed into the counted figures.
        opened_est = CounterMetricFamily(
            "rag_llm_connections_opened_estimated",
            "Connections the pool is estimated to have opened (not counted)", labels=pc)
        closed_est = CounterMetricFamily(
            "rag_llm_connections_closed_estimated",
            "Connections estimated closed, by reason (not counted)", labels=[*pc, "reason"])
        held_est = GaugeMetricFamily(
            "rag_llm_pool_connections_estimated",
            "Connections estimated held now, by state (not counted)", labels=[*pc, "state"])
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
        pool_wait = HistogramMetricFamily(
            "rag_llm_pool_wait_seconds", "Time waiting for a pooled connection", labels=pc)
        connect = HistogramMetricFamily(
            "rag_llm_connect_seconds", "Time to open a connection", labels=pc)
        tls = HistogramMetricFamily(
            "rag_llm_tls_handshake_seconds", "TLS handshake time", labels=pc)
        ttft = HistogramMetricFamily(
            "rag_llm_time_to_first_token_seconds", "Streamed calls: time to first token",
            labels=pc)
        latency = HistogramMetricFamily(
            "rag_llm_request_duration_seconds", "Call duration by operation",
            labels=[*pc, "operation"])
        for s in sorted(stats, key=lambda s: (s.provider, s.client)):
            labels = [s.provider, s.client]
            estimated = s.connections_estimated
            (opened_est if estimated else opened).add_metric(labels, s.connections_opened)
            for reason, count in sorted(s.connections_closed.items()):
                (closed_est if estimated else closed).add_metric([*labels, reason], count)
            resent.add_metric(labels, s.resent)
            for (operation, outcome), count in sorted(s.requests.items()):
                requests.add_metric([*labels, operation, outcome], count)
            for error, count in sorted(s.errors.items()):
                errors.add_metric([*labels, error], count)
            _histogram(pool_wait, labels, s.pool_wait)
            _histogram(connect, labels, s.connect)
            _histogram(tls, labels, s.tls)
            _histogram(ttft, labels, s.time_to_first_token)
            for operation, histogram in sorted(s.latency.items()):
                _histogram(latency, [*labels, operation], histogram)
        max_connections = GaugeMetricFamily("rag_llm_pool_max_connections",
                                            "Configured max_connections", labels=["provider"])
        max_keepalive = GaugeMetricFamily("rag_llm_pool_max_keepalive_connections",
                                          "Configured max_keepalive_connections",
                                          labels=["provider"])
        for pool in sorted(pools, key=lambda p: p.provider):
            max_connections.add_metric([pool.provider], pool.max_connections)
            max_keepalive.add_metric([pool.provider], pool.max_keepalive_connections)
            for client in sorted(pool.clients, key=lambda c: c.client):
                labels = [pool.provider, client.client]
                gauge = held_est if client.stats.connections_estimated else held
                gauge.add_metric([*labels, "active"], client.active)
                gauge.add_metric([*labels, "idle"], client.idle)
                waiting.add_metric(labels, client.stats.requests_waiting)
                if client.stats.concurrency_limit is not None:
                    limit.add_metric(labels, client.stats.concurrency_limit)
        yield from (opened, closed, held, opened_est, closed_est, held_est, waiting, limit,
                    resent, requests, errors, pool_wait, connect, tls, ttft, latency,
                    max_connections, max_keepalive)


_ROUTING: Final = "rag_llm.calls.router"


def _router_snapshots() -> list[RouterSnapshot]:
    # No router exists until a provider module made one: don't import it to find none.
    if _ROUTING not in sys.modules:
        return []
    from rag_llm.calls.router import live_routers

    return [r.snapshot() for r in live_routers() if not r.closed]


def _routing_counts() -> list[RoutingCounts]:
    if _ROUTING not in sys.modules:
        return []
    from rag_llm.calls.counts import counted_routing

    return counted_routing()


class RoutingCollector:
    """Endpoints, breakers, retries and local rejections of every provider.

    Providers that share a name are summed, as the pools are: the breaker and health
    gauges count endpoints. Counters are read from ``counters`` (every router the process
    has had), gauges from ``routers`` (default: the routers not closed).
    """

    def __init__(self, routers: Callable[[], list[RouterSnapshot]] = _router_snapshots,
                 counters: Callable[[], list[RoutingCounts]] = _routing_counts) -> None:
        self._routers = routers
        self._counters = counters

    def describe(self) -> Iterator[Metric]:
        return self._families([], [])

    def collect(self) -> Iterator[Metric]:
        return self._families(self._routers(), self._counters())

    def _families(self, routers: list[RouterSnapshot],
                  counts: list[RoutingCounts]) -> Iterator[Metric]:
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
        for count in counts:
            provider = scrub_text(count.provider)
            for (endpoint, outcome), n in count.attempts.items():
                sums["attempts"][(provider, scrub_text(endpoint), outcome)] += n
            sums["retries"][(provider,)] += count.retries
            for reason, n in count.gave_up.items():
                sums["gave_up"][(provider, reason)] += n
            for reason, n in count.rejected.items():
                sums["rejected"][(provider, reason)] += n
        for snapshot in routers:
            provider = scrub_text(snapshot.provider)
            for e in snapshot.endpoints:
                key = (provider, scrub_text(e.name))
                sums["healthy"][key] += e.healthy
                sums["breaker"][(*key, e.breaker)] += 1
                sums["in_flight"][key] += e.in_flight
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


_STATE: Final = "rag_llm.state"


def _state_counts() -> list[StateReading]:
    # No backend exists until a provider with a Redis made one.
    if _STATE not in sys.modules:
        return []
    from rag_llm.state import counted_state

    return counted_state()


def _state_backends() -> list[StateBackend]:
    if _STATE not in sys.modules:
        return []
    from rag_llm.state import live_backends

    return live_backends()


class StateCollector:
    """Shared state in Redis: lease waits, denials, errors, fallbacks, leases and sync age.

    Counters are read from ``counters`` (every backend the process has had, collected ones
    folded), gauges from ``backends`` (the backends not closed). Providers that share a
    name are summed, except the sync age, the oldest of them.
    """

    def __init__(self, backends: Callable[[], list[StateBackend]] = _state_backends,
                 counters: Callable[[], list[StateReading]] = _state_counts) -> None:
        self._backends = backends
        self._counters = counters

    def describe(self) -> Iterator[Metric]:
        return self._families([], [])

    def collect(self) -> Iterator[Metric]:
        return self._families(self._backends(), self._counters())

    def _families(self, backends: list[StateBackend],
                  counts: list[StateReading]) -> Iterator[Metric]:
        p = ["provider"]
        waits = CounterMetricFamily("rag_llm_state_lease_waits",
                                    "Calls that waited for a global_max_in_flight lease",
                                    labels=p)
        waited = CounterMetricFamily("rag_llm_state_lease_wait_seconds",
                                     "Time calls waited for a global_max_in_flight lease",
                                     labels=p)
        denials = CounterMetricFamily("rag_llm_state_limiter_denials",
                                      "Calls the shared rate limits (or their local "
                                      "fallback) refused", labels=p)
        errors = CounterMetricFamily("rag_llm_state_errors",
                                     "Redis commands that failed or overran the timeout",
                                     labels=p)
        fallbacks = CounterMetricFamily("rag_llm_state_fallbacks",
                                        "Limits applied locally while Redis was unavailable",
                                        labels=p)
        leases = GaugeMetricFamily("rag_llm_state_leases_held",
                                   "global_max_in_flight leases this process holds now",
                                   labels=p)
        age = GaugeMetricFamily("rag_llm_state_sync_age_seconds",
                                "Seconds since shared endpoint state was last read",
                                labels=p)
        up = GaugeMetricFamily("rag_llm_state_available",
                               "Whether the Redis of shared state answers (1) or not (0)",
                               labels=p)
        by: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0, 0])
        for c in counts:
            into = by[scrub_text(c.provider)]
            for i, value in enumerate((c.lease_waits, c.lease_wait_seconds, c.denials,
                                       c.errors, c.fallbacks)):
                into[i] += value
        for provider, values in sorted(by.items()):
            for family, value in zip((waits, waited, denials, errors, fallbacks), values,
                                     strict=True):
                family.add_metric([provider], value)
        gauges: dict[str, list[float]] = {}
        for backend in backends:
            provider = scrub_text(backend.provider)
            held, oldest, available = gauges.get(provider, [0, 0.0, 1])
            gauges[provider] = [held + backend.leases(), max(oldest, backend.sync_age()),
                                min(available, backend.available)]
        for provider, (held, oldest, available) in sorted(gauges.items()):
            leases.add_metric([provider], held)
            age.add_metric([provider], oldest)
            up.add_metric([provider], available)
        yield from (waits, waited, denials, errors, fallbacks, leases, age, up)


class WorkCollector:
    """The service's own work (:mod:`rag_llm.observability.work`): embedder calls, by
    embedder and where it runs, queries by answer mode, and the store's size."""

    def __init__(self, work: Callable[[], WorkSnapshot] = WORK.snapshot) -> None:
        self._work = work

    def describe(self) -> Iterator[Metric]:
        return self._families(WorkSnapshot())

    def collect(self) -> Iterator[Metric]:
        return self._families(self._work())

    def _families(self, work: WorkSnapshot) -> Iterator[Metric]:
        ew = ["embedder", "where"]
        calls = CounterMetricFamily("rag_llm_embed_calls", "Embedder calls the service made "
                                    "(where: local, in this process, or remote)", labels=ew)
        errors = CounterMetricFamily("rag_llm_embed_errors", "Embedder calls that failed",
                                     labels=ew)
        texts = CounterMetricFamily("rag_llm_embed_texts", "Texts embedded", labels=ew)
        batch = HistogramMetricFamily("rag_llm_embed_batch_texts", "Texts per embedder call",
                                      labels=ew)
        seconds = HistogramMetricFamily("rag_llm_embed_duration_seconds",
                                        "Seconds per embedder call", labels=ew)
        for e in work.embedders:
            labels = [scrub_text(e.embedder), e.where]
            calls.add_metric(labels, e.calls)
            errors.add_metric(labels, e.errors)
            texts.add_metric(labels, e.texts)
            _histogram(batch, labels, e.batch)
            _histogram(seconds, labels, e.seconds)
        queries = CounterMetricFamily("rag_llm_queries", "Questions answered, by answer mode",
                                      labels=["mode"])
        for mode, count in sorted(work.queries.items()):
            queries.add_metric([mode], count)
        retrieval = HistogramMetricFamily("rag_llm_query_retrieval_seconds",
                                          "Seconds to embed a question and search the store")
        answer = HistogramMetricFamily("rag_llm_query_answer_seconds",
                                       "Seconds from the sources found to the whole answer")
        for family, histogram in ((retrieval, work.retrieval), (answer, work.answer)):
            if histogram is not None:
                _histogram(family, [], histogram)
        documents = GaugeMetricFamily("rag_llm_documents",
                                      "Documents in the store, as this process last saw it")
        chunks = GaugeMetricFamily("rag_llm_chunks",
                                   "Chunks in the store, as this process last saw it")
        if work.documents is not None and work.chunks is not None:
            documents.add_metric([], work.documents)
            chunks.add_metric([], work.chunks)
        yield from (calls, errors, texts, batch, seconds, queries, retrieval, answer,
                    documents, chunks)


class _Exports:
    """Where rag-llm's collectors are registered; changed under ``lock`` only."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work = WorkCollector()
        self.collectors = (PoolCollector(), RoutingCollector(), StateCollector(), self.work)
        self.registries: list[CollectorRegistry] = []
        self.handed_over = False  # register() was called: no default registration
        self.by_default = False  # in REGISTRY because the first provider put them there
        self.own = CollectorRegistry(auto_describe=False)
        for collector in self.collectors:
            self.own.register(collector)

    def add(self, registry: CollectorRegistry) -> None:
        if not any(r is registry for r in self.registries):
            for collector in self.collectors:
                registry.register(collector)
            self.registries.append(registry)

    def remove(self, registry: CollectorRegistry) -> None:
        if any(r is registry for r in self.registries):
            for collector in self.collectors:
                registry.unregister(collector)
            self.registries = [r for r in self.registries if r is not registry]


_exports: Final = _Exports()


def register(registry: CollectorRegistry = REGISTRY) -> None:
    """Export rag-llm's metrics through ``registry``; idempotent.

    Without it, the first provider built registers them in prometheus_client's default
    ``REGISTRY``. Handing over another registry, before or after that, takes them out of
    the default one, so they appear once, where the application serves its metrics.
    ``register(REGISTRY)`` keeps them in the default registry as well.
    """
    with _exports.lock:
        _exports.handed_over = True
        if registry is not REGISTRY and _exports.by_default:
            _exports.remove(REGISTRY)
        _exports.by_default = False
        _exports.add(registry)


def register_default() -> None:
    """Register in the default ``REGISTRY`` unless :func:`register` was called: what
    building a provider does, once per process."""
    with _exports.lock:
        if not _exports.handed_over and not _exports.registries:
            _exports.add(REGISTRY)
            _exports.by_default = True


def render_metrics() -> bytes:
    """The Prometheus text exposition of rag-llm's metrics alone, whatever is registered."""
    return generate_latest(_exports.own)


def collect_metrics() -> list[Metric]:
    """rag-llm's metric families now, as ``render_metrics()`` would show them."""
    return list(_exports.own.collect())


def collect_work_metrics() -> list[Metric]:
    """The families of the service's own work alone: what the dashboard reads them from,
    without building every pool's histograms (about 1 ms per provider a process has seen)."""
    return list(_exports.work.collect())


class _Families:
    """A collector that yields the families it was given (what several workers add up to)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render_families(families: list[Metric]) -> bytes:
    """The Prometheus text exposition of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
