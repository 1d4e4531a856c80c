"""Exact pool and request statistics, fed by the transports' own connection events.

A :class:`ClientStats` belongs to one client (sync or async) of one provider. Transports
call its ``connection_*`` and ``wait_*`` methods from their connection hooks; providers
call ``request_done``. Everything is counted, nothing estimated, and a snapshot is a
plain value that the Prometheus exporter, the health endpoint and the dashboard read.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from rag_llm.observability.events import get_logger

__all__ = [
    "ClientStats",
    "ClientStatsSnapshot",
    "Histogram",
    "HistogramSnapshot",
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

    def snapshot(self) -> ClientStatsSnapshot:
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
                recent_latencies=tuple(self._recent),
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                last_success_at=self._last_success_at,
                concurrency_limit=self.concurrency_limit,
            )
