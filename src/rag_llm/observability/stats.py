"""Pool and request statistics, fed by the transports' own connection events.

A :class:`ClientStats` belongs to one client (sync or async) of one provider. Transports
call its ``connection_*`` and ``wait_*`` methods from their connection hooks; providers
call ``request_done``. Everything is counted, except connections on a transport that has
no connection hooks (pyreqwest): those are estimated and flagged
``connections_estimated``. A snapshot is a plain value that the Prometheus exporter,
the health endpoint and the dashboard read.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from rag_llm.observability.events import get_logger

__all__ = [
    "ClientStats",
    "ClientStatsSnapshot",
    "Histogram",
    "HistogramSnapshot",
    "Ledger",
    "merge_client_stats",
    "percentile",
]

# Seconds: from sub-millisecond loopback calls to multi-minute generations.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Seconds to wait for a pooled connection or to open one.
WAIT_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0, 10.0)
# Recent request latencies kept for percentiles on the dashboard.
_RECENT: Final = 2048
# A wait for a pooled connection this long means the pool is saturated.
SATURATION_WAIT_S: Final = 0.1
# Each kind of warning is logged at most once per this many seconds per client.
WARN_INTERVAL_S: Final = 10.0

_log = get_logger()
C = TypeVar("C")
S = TypeVar("S")
T = TypeVar("T", bound=Hashable)


class _Throttle:
    """Lets a warning through at most once per interval, counting what it held back."""

    __slots__ = ("_interval", "_next", "held_back")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self.held_back = 0

    def allow(self, now: float) -> bool:
        if now < self._next:
            self.held_back += 1
            return False
        self._next = now + self._interval
        return True


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of sorted values, interpolated linearly; None if empty."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; one more for +Inf
    count: int
    sum: float


class Histogram:
    """Fixed-bucket histogram (Prometheus semantics); not thread-safe on its own."""

    __slots__ = ("_buckets", "_counts", "_sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._buckets, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._buckets, tuple(self._counts), sum(self._counts),
                                 self._sum)


def _add_histograms(a: HistogramSnapshot, b: HistogramSnapshot) -> HistogramSnapshot:
    return HistogramSnapshot(a.buckets, tuple(x + y for x, y in zip(a.counts, b.counts,
                                                                    strict=True)),
                             a.count + b.count, a.sum + b.sum)


def _add_counts(a: dict[T, int], b: dict[T, int]) -> dict[T, int]:
    total = dict(a)
    for key, count in b.items():
        total[key] = total.get(key, 0) + count
    return total


@dataclass(frozen=True, slots=True)
class ClientStatsSnapshot:
    """The statistics of one client of one provider at one moment."""

    provider: str
    client: str
    library: str
    connections_opened: int
    connections_closed: dict[str, int]
    requests_waiting: int
    requests: dict[tuple[str, str], int]  # (operation, outcome) -> count
    errors: dict[str, int]  # exception type -> count
    resent: int
    pool_wait: HistogramSnapshot
    connect: HistogramSnapshot
    tls: HistogramSnapshot
    latency: dict[str, HistogramSnapshot]  # operation -> latency
    time_to_first_token: HistogramSnapshot
    recent_latencies: tuple[float, ...] = field(default=())
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    concurrency_limit: int | None = None  # set when adaptive_concurrency is on
    # True when the transport cannot see its connections (pyreqwest): connection figures
    # are then a model's estimate, never a count.
    connections_estimated: bool = False

    @property
    def requests_total(self) -> int:
        return sum(self.requests.values())

    @property
    def reuse_ratio(self) -> float:
        """Requests served per connection opened."""
        return self.requests_total / self.connections_opened if self.connections_opened else 0.0


class ClientStats:
    """Counters of one client, updated from any thread under one lock."""

    def __init__(self, provider: str, client: str, library: str, *,
                 max_connections: int = 0, slow_request_s: float = 10.0) -> None:
        self.provider = provider
        self.client = client
        self.library = library
        self.max_connections = max_connections
        self.slow_request_s = slow_request_s
        self._saturated = _Throttle(WARN_INTERVAL_S)
        self._slow = _Throttle(WARN_INTERVAL_S)
        # Set while the pool closes its transports: closes then count as "shutdown".
        self.shutting_down = False
        self._lock = threading.Lock()
        self._opened = 0
        self._closed: Counter[str] = Counter()
        self._waiting = 0
        self._requests: Counter[tuple[str, str]] = Counter()
        self._errors: Counter[str] = Counter()
        self._resent = 0
        self._pool_wait = Histogram(WAIT_BUCKETS)
        self._connect = Histogram(WAIT_BUCKETS)
        self._tls = Histogram(WAIT_BUCKETS)
        self._latency: dict[str, Histogram] = {}
        self._ttft = Histogram(LATENCY_BUCKETS)
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_success_at: float | None = None
        self.concurrency_limit: int | None = None
        # Set by a transport whose connection figures are estimated, not counted.
        self.connections_estimated = False

    # -- connection events (transports) ---------------------------------------------

    def connection_opened(self, connect_s: float | None = None) -> None:
        with self._lock:
            self._opened += 1
            if connect_s is not None:
                self._connect.observe(connect_s)

    def connect_timed(self, seconds: float) -> None:
        """How long opening a connection took, where the transport reports it apart."""
        with self._lock:
            self._connect.observe(seconds)

    def tls_handshake_timed(self, seconds: float) -> None:
        with self._lock:
            self._tls.observe(seconds)

    def connection_closed(self, reason: str) -> None:
        with self._lock:
            self._closed["shutdown" if self.shutting_down else reason] += 1

    def wait_started(self) -> None:
        with self._lock:
            self._waiting += 1

    def wait_ended(self, seconds: float) -> None:
        with self._lock:
            self._waiting -= 1
            self._pool_wait.observe(seconds)
            waiting = self._waiting
            warn = seconds >= SATURATION_WAIT_S and self._saturated.allow(time.monotonic())
        if warn:
            _log.warning("pool_saturated", provider=self.provider, client=self.client,
                         waited_s=round(seconds, 4), still_waiting=waiting,
                         max_connections=self.max_connections,
                         similar_since_last=self._saturated.held_back)
            self._saturated.held_back = 0

    def request_resent(self) -> None:
        with self._lock:
            self._resent += 1

    # -- request events (providers) -----------------------------------------------

    def request_done(self, operation: str, outcome: str, seconds: float,
                     error: BaseException | None = None) -> None:
        """Record one call; ``outcome`` is an HTTP status or an error kind."""
        now = time.time()
        with self._lock:
            self._requests[(operation, outcome)] += 1
            histogram = self._latency.get(operation)
            if histogram is None:
                histogram = self._latency[operation] = Histogram(LATENCY_BUCKETS)
            histogram.observe(seconds)
            self._recent.append(seconds)
            if error is None:
                self._last_success_at = now
            else:
                self._errors[type(error).__name__] += 1
                self._last_error = f"{type(error).__name__}: {error}"
                self._last_error_at = now
            warn = seconds >= self.slow_request_s and self._slow.allow(time.monotonic())
        if warn:
            _log.warning("slow_request", provider=self.provider, client=self.client,
                         operation=operation, outcome=outcome, duration_s=round(seconds, 3),
                         threshold_s=self.slow_request_s,
                         similar_since_last=self._slow.held_back)
            self._slow.held_back = 0

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self._ttft.observe(seconds)

    def snapshot(self, *, recent: bool = True) -> ClientStatsSnapshot:
        """The counters now; ``recent=False`` leaves out the recent latencies."""
        with self._lock:
            return ClientStatsSnapshot(
                provider=self.provider,
                client=self.client,
                library=self.library,
                connections_opened=self._opened,
                connections_closed=dict(self._closed),
                requests_waiting=self._waiting,
                requests=dict(self._requests),
                errors=dict(self._errors),
                resent=self._resent,
                pool_wait=self._pool_wait.snapshot(),
                connect=self._connect.snapshot(),
                tls=self._tls.snapshot(),
                latency={op: h.snapshot() for op, h in self._latency.items()},
                time_to_first_token=self._ttft.snapshot(),
                recent_latencies=tuple(self._recent) if recent else (),
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                last_success_at=self._last_success_at,
                concurrency_limit=self.concurrency_limit,
                connections_estimated=self.connections_estimated,
            )


def _add_client_stats(a: ClientStatsSnapshot, b: ClientStatsSnapshot) -> ClientStatsSnapshot:
    latency = dict(a.latency)
    for operation, histogram in b.latency.items():
        old = latency.get(operation)
        latency[operation] = histogram if old is None else _add_histograms(old, histogram)
    latest = b if b.last_error is not None and (
        (b.last_error_at or 0.0) >= (a.last_error_at or 0.0)) else a
    successes = [t for t in (a.last_success_at, b.last_success_at) if t is not None]
    limits = [n for n in (a.concurrency_limit, b.concurrency_limit) if n is not None]
    return ClientStatsSnapshot(
        provider=a.provider,
        client=a.client,
        library=b.library,
        connections_opened=a.connections_opened + b.connections_opened,
        connections_closed=_add_counts(a.connections_closed, b.connections_closed),
        requests_waiting=a.requests_waiting + b.requests_waiting,
        requests=_add_counts(a.requests, b.requests),
        errors=_add_counts(a.errors, b.errors),
        resent=a.resent + b.resent,
        pool_wait=_add_histograms(a.pool_wait, b.pool_wait),
        connect=_add_histograms(a.connect, b.connect),
        tls=_add_histograms(a.tls, b.tls),
        latency=latency,
        time_to_first_token=_add_histograms(a.time_to_first_token, b.time_to_first_token),
        recent_latencies=a.recent_latencies + b.recent_latencies,
        last_error=latest.last_error,
        last_error_at=latest.last_error_at,
        last_success_at=max(successes) if successes else None,
        concurrency_limit=sum(limits) if limits else None,
        connections_estimated=a.connections_estimated or b.connections_estimated,
    )


def merge_client_stats(snapshots: Iterable[ClientStatsSnapshot]) -> list[ClientStatsSnapshot]:
    """``snapshots`` summed per (provider, client), in order of first appearance.

    Counters and histograms add up, recent latencies are joined, and the latest error and
    success win: what the exporter, the health routes and the dashboard show of a provider
    whose calls spread over several pools.
    """
    merged: dict[tuple[str, str], ClientStatsSnapshot] = {}
    for snapshot in snapshots:
        key = (snapshot.provider, snapshot.client)
        old = merged.get(key)
        merged[key] = snapshot if old is None else _add_client_stats(old, snapshot)
    return list(merged.values())


class Ledger(Generic[C, S]):
    """Counters that outlive their owners, so that exported totals never go down.

    ``track(owner, counters)`` counts ``counters`` (read with ``read``) while ``owner``
    lives; once ``owner`` is garbage-collected, their last reading is folded, by ``fold``
    (which sums readings with the same labels), into totals kept for the life of the
    process. A closed and rebuilt provider's counters thus go on from where they were.
    """

    def __init__(self, read: Callable[[C], Iterable[S]],
                 fold: Callable[[Iterable[S]], list[S]]) -> None:
        self._read = read
        self._fold = fold
        self._lock = threading.Lock()
        self._live: dict[weakref.ref[object], C] = {}
        # Filled by weakref callbacks, which may run in any thread, even one holding the
        # lock (a garbage collection inside readings()): so they only append here.
        self._dead: list[weakref.ref[object]] = []
        self._totals: list[S] = []

    def track(self, owner: object, counters: C) -> None:
        """Count ``counters`` from now on; tracking ``owner`` again replaces its counters."""
        ref = weakref.ref(owner, self._dead.append)
        with self._lock:
            self._live[ref] = counters

    def readings(self) -> list[S]:
        """The totals of collected owners, then a reading of each live owner's counters."""
        with self._lock:
            while self._dead:
                counters = self._live.pop(self._dead.pop(), None)
                if counters is not None:
                    self._totals = self._fold([*self._totals, *self._read(counters)])
            totals, live = list(self._totals), list(self._live.values())
        # An owner collected from here on is still in ``live`` and folded only later.
        return [*totals, *(reading for counters in live for reading in self._read(counters))]

    def forget_totals(self) -> None:
        """Drop the folded totals (a forked child, whose counters start afresh)."""
        with self._lock:
            self._dead.clear()
            self._totals = []
