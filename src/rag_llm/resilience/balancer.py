"""Which endpoint takes the next call: priority tiers, panic mode, and a pluggable strategy.

The balancer keeps, per endpoint, the calls in flight and a peak EWMA of latency (Finagle's
``PeakEwma``: it jumps to a slower observation at once and decays toward faster ones over
``latency_decay`` seconds). Each pick looks at a snapshot of every endpoint and:

1. takes the lowest-numbered priority tier whose healthy share is at least
   ``panic_threshold``, and its healthy endpoints;
2. if no tier is that healthy, panics like Envoy: spreads over every endpoint of the lowest
   tier that has a healthy one, ignoring health, so a few survivors are not crushed;
3. leaves out the endpoints in ``exclude`` (those a call already tried), moving on to the
   next healthy tier, and takes them again only when nothing healthy is left;
4. hands the candidates to the strategy: power of two choices over ``latency * (in_flight +
   1) / weight`` (the default), least in flight, or smooth weighted round-robin.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final, TypeAlias

from rag_llm.errors import ConfigError
from rag_llm.resilience._common import Clock, Random, check_number

__all__ = [
    "DEFAULT_LATENCY_DECAY",
    "DEFAULT_PANIC_THRESHOLD",
    "STRATEGIES",
    "Balancer",
    "BalancerPolicy",
    "Endpoint",
    "EndpointSnapshot",
    "Lease",
    "PeakEwma",
    "SmoothWeightedRoundRobin",
    "Strategy",
    "least_in_flight",
    "power_of_two_choices",
    "select_candidates",
]

# Finagle's PeakEwma decayTime and Envoy's healthy_panic_threshold.
DEFAULT_LATENCY_DECAY: Final = 10.0
DEFAULT_PANIC_THRESHOLD: Final = 0.5
# Finagle's penalty: an endpoint with calls out and no latency seen yet is the last choice.
_PENALTY: Final = 1e300


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream a call can go to: ``weight`` scales its share, lower ``priority`` first.

    >>> Endpoint("east", weight=2, priority=0)
    Endpoint(name='east', weight=2, priority=0)
    """

    name: str
    weight: int = 1
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", self.name, "must be a non-empty string")
        check_number("weight", self.weight, minimum=1, integer=True)
        check_number("priority", self.priority, minimum=0, integer=True)


@dataclass(frozen=True, slots=True)
class PeakEwma:
    """Peak-sensitive moving average of latency; ``observe`` returns the updated value."""

    decay: float = DEFAULT_LATENCY_DECAY
    estimate: float = 0.0
    stamp: float = 0.0

    def value(self, now: float) -> float:
        """The estimate decayed toward zero for the time since the last observation."""
        return self.estimate * self._weight(now)

    def observe(self, latency: float, now: float) -> PeakEwma:
        weight = self._weight(now)
        decayed = self.estimate * weight
        estimate = latency if latency > decayed else decayed + latency * (1.0 - weight)
        return replace(self, estimate=estimate, stamp=now)

    def _weight(self, now: float) -> float:
        return math.exp(-max(now - self.stamp, 0.0) / self.decay)


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    """An endpoint as a strategy sees it at one pick."""

    endpoint: Endpoint
    healthy: bool
    in_flight: int
    latency: float

    @property
    def load(self) -> float:
        """Finagle's peak EWMA load: expected latency times the queue a new call joins."""
        if self.latency == 0.0 and self.in_flight:
            return _PENALTY + self.in_flight
        return self.latency * (self.in_flight + 1)


Strategy: TypeAlias = Callable[[Sequence[EndpointSnapshot], Random], EndpointSnapshot]


def power_of_two_choices(candidates: Sequence[EndpointSnapshot], rng: Random) -> EndpointSnapshot:
    """Two distinct candidates at random; the one with the lower load per unit of weight."""
    if len(candidates) == 1:
        return candidates[0]
    first = int(rng.random() * len(candidates))
    second = int(rng.random() * (len(candidates) - 1))
    second += second >= first
    a, b = candidates[first], candidates[second]
    return b if b.load / b.endpoint.weight < a.load / a.endpoint.weight else a


def least_in_flight(candidates: Sequence[EndpointSnapshot], rng: Random) -> EndpointSnapshot:
    """The candidate with the fewest calls in flight per unit of weight; ties at random."""
    scores = [(c.in_flight + 1) / c.endpoint.weight for c in candidates]
    best = min(scores)
    ties = [c for c, score in zip(candidates, scores, strict=True) if score == best]
    return ties[int(rng.random() * len(ties))]


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: weights 5, 1, 1 give a a b a c a a."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def __call__(self, candidates: Sequence[EndpointSnapshot], rng: Random) -> EndpointSnapshot:
        total = 0
        best: EndpointSnapshot | None = None
        for candidate in candidates:
            name, weight = candidate.endpoint.name, candidate.endpoint.weight
            self._current[name] = self._current.get(name, 0) + weight
            total += weight
            if best is None or self._current[name] > self._current[best.endpoint.name]:
                best = candidate
        assert best is not None, "candidates is never empty"
        self._current[best.endpoint.name] -= total
        return best


STRATEGIES: Final[Mapping[str, Callable[[], Strategy]]] = {
    "p2c": lambda: power_of_two_choices,
    "least_in_flight": lambda: least_in_flight,
    "round_robin": SmoothWeightedRoundRobin,
}


@dataclass(frozen=True, slots=True)
class BalancerPolicy:
    """The strategy (a name in ``STRATEGIES``), the panic threshold and the latency decay.

    >>> BalancerPolicy(strategy="round_robin").panic_threshold
    0.5
    """

    strategy: str = "p2c"
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    latency_decay: float = DEFAULT_LATENCY_DECAY

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", self.strategy,
                              f"must be one of {', '.join(sorted(STRATEGIES))}")
        check_number("panic_threshold", self.panic_threshold, minimum=0, maximum=1)
        check_number("latency_decay", self.latency_decay, minimum=0, exclusive=True)


def select_candidates(
    snapshots: Sequence[EndpointSnapshot],
    *,
    exclude: Collection[str] = (),
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
) -> list[EndpointSnapshot]:
    """The endpoints a pick may choose from: tier, panic and exclusion applied (see above)."""
    tiers: dict[int, list[EndpointSnapshot]] = {}
    for snapshot in sorted(snapshots, key=lambda s: s.endpoint.priority):
        tiers.setdefault(snapshot.endpoint.priority, []).append(snapshot)
    healthy_tiers = [
        healthy for tier in tiers.values()
        if (healthy := [s for s in tier if s.healthy])
        and len(healthy) >= panic_threshold * len(tier)
    ]
    if healthy_tiers:
        for healthy in healthy_tiers:
            if usable := [s for s in healthy if s.endpoint.name not in exclude]:
                return usable
        return healthy_tiers[0]  # every healthy endpoint excluded: one of them again
    if not tiers:
        return []
    # Panic: the lowest tier with a healthy endpoint, else the lowest tier, health ignored.
    tier = min(tiers.values(), key=lambda t: not any(s.healthy for s in t))
    return [s for s in tier if s.endpoint.name not in exclude] or tier


class Lease:
    """One call placed on ``endpoint``: counts it in flight until ``finish()``.

    As a context manager it records the elapsed time as latency when the call succeeds,
    and none when it raises (a fast failure must not make an endpoint look fast).
    """

    __slots__ = ("_balancer", "_finished", "_started", "endpoint")

    def __init__(self, balancer: Balancer, endpoint: Endpoint, started: float) -> None:
        self._balancer = balancer
        self._finished = False
        self._started = started
        self.endpoint = endpoint

    def finish(self, latency: float | None = None) -> None:
        """End the call, observing ``latency`` seconds when given; later calls do nothing."""
        self._balancer._finish(self, latency)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._finished:
            elapsed = self._balancer._clock() - self._started
            self.finish(elapsed if exc is None else None)


class Balancer:
    """Thread-safe endpoint picker over a fixed set of endpoints.

    ``health(endpoint)`` says whether an endpoint is healthy (e.g. its breaker's
    ``available``); it is read before the lock is taken, so it may take locks of its own.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        policy: BalancerPolicy | None = None,
        *,
        health: Callable[[Endpoint], bool] | None = None,
        clock: Clock = time.monotonic,
        rng: Random | None = None,
    ) -> None:
        self.policy = policy or BalancerPolicy()
        self.endpoints = tuple(endpoints)
        names = [e.name for e in self.endpoints]
        if not names:
            raise ConfigError("endpoints", [], "must name at least one endpoint")
        if len(set(names)) != len(names):
            raise ConfigError("endpoints", names, "must have distinct names")
        self._strategy = STRATEGIES[self.policy.strategy]()
        self._health = health
        self._clock = clock
        self._rng: Random = rng or random.Random()  # noqa: S311 - load spreading
        self._lock = threading.Lock()
        self._in_flight = dict.fromkeys(names, 0)
        self._latency = dict.fromkeys(names, PeakEwma(self.policy.latency_decay))

    def pick(self, *, exclude: Collection[str] = ()) -> Lease:
        """Choose an endpoint for one call and count it in flight; finish the lease after."""
        healthy = {e.name: self._health(e) if self._health else True for e in self.endpoints}
        with self._lock:
            now = self._clock()
            snapshots = self._snapshots(healthy, now)
            candidates = select_candidates(
                snapshots, exclude=exclude, panic_threshold=self.policy.panic_threshold)
            chosen = self._strategy(candidates, self._rng).endpoint
            self._in_flight[chosen.name] += 1
        return Lease(self, chosen, now)

    def snapshot(self) -> list[EndpointSnapshot]:
        healthy = {e.name: self._health(e) if self._health else True for e in self.endpoints}
        with self._lock:
            return self._snapshots(healthy, self._clock())

    def _snapshots(self, healthy: Mapping[str, bool], now: float) -> list[EndpointSnapshot]:
        return [EndpointSnapshot(e, healthy[e.name], self._in_flight[e.name],
                                 self._latency[e.name].value(now)) for e in self.endpoints]

    def _finish(self, lease: Lease, latency: float | None) -> None:
        with self._lock:
            if lease._finished:
                return
            lease._finished = True
            name = lease.endpoint.name
            self._in_flight[name] -= 1
            if latency is not None:
                self._latency[name] = self._latency[name].observe(latency, self._clock())
