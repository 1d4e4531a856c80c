"""The dashboard's frame: every pool's figures at one moment, as a JSON-ready dict.

A frame holds cumulative counters (requests, errors, connections opened, pool-wait count
and sum) and current values (connections held, requests waiting, latency percentiles over
each client's last calls). Readers compute rates from two consecutive frames, dividing by
the difference of their ``time``. Pools that share a provider name are summed, as in the
Prometheus exporter, so each (provider, client) appears once. Providers are labelled by
their name; no URL is included and error text is scrubbed of credentials.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from rag_llm.observability.events import scrub_text
from rag_llm.observability.stats import percentile
from rag_llm.pool import ClientSnapshot, PoolSnapshot

__all__ = ["FRAME_VERSION", "PERCENTILES", "dashboard_frame", "encode_event"]

FRAME_VERSION: Final = 1
PERCENTILES: Final = (50, 95, 99)
_CLIENT_ORDER: Final = ("sync", "async")
# user:password@ in a URL, and credential-named query parameters.
_URL_USERINFO: Final = re.compile(r"(?<=://)[^\s/@]+@")
_QUERY_SECRET: Final = re.compile(
    r"([?&](?:api[-_]?key|key|token|access_token|sig|signature|secret|password)=)[^&\s\"']+",
    re.I,
)


def _scrub(text: str) -> str:
    text = _URL_USERINFO.sub("***@", text)
    return scrub_text(_QUERY_SECRET.sub(r"\1***", text))


@dataclass
class _Client:
    """One (provider, client)'s figures, summed over the pools with that provider name."""

    client: str
    library: str = ""
    open: bool = False
    active: int = 0
    idle: int = 0
    waiting: int = 0
    opened: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    resent: int = 0
    wait_count: int = 0
    wait_sum: float = 0.0
    latencies: list[float] = field(default_factory=list)
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None

    def add(self, snapshot: ClientSnapshot) -> None:
        s = snapshot.stats
        self.library = snapshot.library
        self.open = self.open or snapshot.open
        self.active += snapshot.active
        self.idle += snapshot.idle
        self.waiting += s.requests_waiting
        self.opened += s.connections_opened
        for reason, count in s.connections_closed.items():
            self.closed[reason] = self.closed.get(reason, 0) + count
        self.requests += s.requests_total
        for error, count in s.errors.items():
            self.errors[error] = self.errors.get(error, 0) + count
        self.resent += s.resent
        self.wait_count += s.pool_wait.count
        self.wait_sum += s.pool_wait.sum
        self.latencies.extend(s.recent_latencies)
        if s.last_error is not None and (s.last_error_at or 0.0) >= (self.last_error_at or 0.0):
            self.last_error, self.last_error_at = s.last_error, s.last_error_at
        if s.last_success_at is not None:
            self.last_success_at = max(self.last_success_at or 0.0, s.last_success_at)

    def frame(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        latency: dict[str, Any] = {f"p{q}": percentile(ordered, q) for q in PERCENTILES}
        latency["samples"] = len(ordered)
        return {
            "client": self.client,
            "library": self.library,
            "open": self.open,
            "active": self.active,
            "idle": self.idle,
            "waiting": self.waiting,
            "connections_opened": self.opened,
            "connections_closed": sum(self.closed.values()),
            "closed_by_reason": dict(sorted(self.closed.items())),
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "errors_by_type": dict(sorted(self.errors.items())),
            "resent": self.resent,
            "reuse_ratio": self.requests / self.opened if self.opened else None,
            "pool_wait_count": self.wait_count,
            "pool_wait_sum": self.wait_sum,
            "latency": latency,
            "last_error": _scrub(self.last_error) if self.last_error else None,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
        }


@dataclass
class _Provider:
    name: str
    limits: PoolSnapshot | None = None
    states: set[str] = field(default_factory=set)
    pools: int = 0
    clients: dict[str, _Client] = field(default_factory=dict)

    def add(self, snapshot: PoolSnapshot) -> None:
        self.pools += 1
        self.states.add(snapshot.state)
        if self.limits is None or snapshot.state != "closed":
            self.limits = snapshot
        for client in snapshot.clients:
            self.clients.setdefault(client.client, _Client(client.client)).add(client)

    def frame(self) -> dict[str, Any]:
        limits = self.limits
        assert limits is not None  # set by the first add()
        clients = sorted(self.clients.values(), key=lambda c: (
            _CLIENT_ORDER.index(c.client) if c.client in _CLIENT_ORDER else len(_CLIENT_ORDER),
            c.client))
        frames = [c.frame() for c in clients]
        failed = [c for c in frames if c["last_error_at"] is not None]
        latest = max(failed, key=lambda c: c["last_error_at"], default=None)
        return {
            "provider": self.name,
            "transport": limits.transport,
            "state": next((s for s in ("open", "unopened") if s in self.states), "closed"),
            "pools": self.pools,
            "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry,
            "last_error": latest["last_error"] if latest else None,
            "last_error_at": latest["last_error_at"] if latest else None,
            "clients": frames,
        }


def dashboard_frame(snapshots: Iterable[PoolSnapshot], now: float | None = None,
                    ) -> dict[str, Any]:
    """The frame of ``snapshots``: per provider and client, counters and latency percentiles.

    >>> dashboard_frame([])["providers"]
    []
    """
    providers: dict[str, _Provider] = {}
    for snapshot in snapshots:
        name = _scrub(snapshot.provider)
        providers.setdefault(name, _Provider(name)).add(snapshot)
    return {
        "version": FRAME_VERSION,
        "time": time.time() if now is None else now,
        "providers": [providers[name].frame() for name in sorted(providers)],
    }


def encode_event(frame: dict[str, Any]) -> str:
    """``frame`` as one server-sent event: a single ``data:`` line and a blank line."""
    return f"data: {json.dumps(frame, separators=(',', ':'), allow_nan=False)}\n\n"
