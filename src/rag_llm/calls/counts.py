"""What a provider's router counts and shows: attempts, retries, refusals, endpoint state.

The counters live apart from the router, in a :class:`~rag_llm.observability.stats.Ledger`,
so that a collected router's totals are folded into the process's and never go down.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from rag_llm.observability.stats import Ledger

__all__ = ["COUNTS", "Counts", "EndpointState", "RouterSnapshot", "RoutingCounts",
           "counted_routing"]


@dataclass(frozen=True, slots=True)
class EndpointState:
    """An endpoint as dashboards and metrics see it."""

    name: str
    url: str
    healthy: bool
    breaker: str
    in_flight: int
    latency: float
    attempts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RouterSnapshot:
    """A provider's endpoints, retries and local rejections, as plain data."""

    provider: str
    endpoints: Sequence[EndpointState]
    retries: int
    gave_up: Mapping[str, int]
    rejected: Mapping[str, int]
    budget_available: int | None


@dataclass(frozen=True, slots=True)
class RoutingCounts:
    """A provider's routing counters: they only ever go up (see :func:`counted_routing`)."""

    provider: str
    attempts: Mapping[tuple[str, str], int]  # (endpoint, outcome) -> count
    retries: int
    gave_up: Mapping[str, int]
    rejected: Mapping[str, int]


class Counts:
    """A router's counters, apart from it so they can be folded once it is collected."""

    __slots__ = ("attempts", "gave_up", "lock", "rejected", "retries")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.gave_up: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.retries = 0

    def read(self, provider: str) -> RoutingCounts:
        with self.lock:
            return RoutingCounts(provider, dict(self.attempts), self.retries,
                                 dict(self.gave_up), dict(self.rejected))


def _sum_counts(readings: Iterable[RoutingCounts]) -> list[RoutingCounts]:
    merged: dict[str, RoutingCounts] = {}
    for r in readings:
        old = merged.get(r.provider)
        merged[r.provider] = r if old is None else RoutingCounts(
            r.provider, Counter(old.attempts) + Counter(r.attempts), old.retries + r.retries,
            Counter(old.gave_up) + Counter(r.gave_up), Counter(old.rejected) + Counter(r.rejected))
    return list(merged.values())


COUNTS: Final[Ledger[tuple[str, Counts], RoutingCounts]] = Ledger(
    lambda held: [held[1].read(held[0])], _sum_counts)


def counted_routing() -> list[RoutingCounts]:
    """The routing counters of every router this process has had, collected ones folded."""
    return COUNTS.readings()

