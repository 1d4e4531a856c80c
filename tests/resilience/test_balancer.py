"""Balancer: strategies, peak EWMA, priority tiers, panic mode and exclusion."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilkit import HYPOTHESIS, FakeClock, FixedRandom

from rag_llm.errors import ConfigError
from rag_llm.resilience import (
    Balancer,
    BalancerPolicy,
    Endpoint,
    EndpointSnapshot,
    Lease,
    PeakEwma,
    SmoothWeightedRoundRobin,
    least_in_flight,
    power_of_two_choices,
    select_candidates,
)


def snap(name: str, *, healthy: bool = True, in_flight: int = 0, latency: float = 0.0,
         weight: int = 1, priority: int = 0) -> EndpointSnapshot:
    return EndpointSnapshot(Endpoint(name, weight, priority), healthy, in_flight, latency)


def names(snapshots: list[EndpointSnapshot]) -> list[str]:
    return [s.endpoint.name for s in snapshots]


def test_smooth_weighted_round_robin_matches_nginx_order() -> None:
    pick = SmoothWeightedRoundRobin()
    candidates = [snap("a", weight=5), snap("b"), snap("c")]
    order = [pick(candidates, FixedRandom(0.0)).endpoint.name for _ in range(7)]
    assert order == ["a", "a", "b", "a", "c", "a", "a"]


@given(weights=st.lists(st.integers(1, 9), min_size=1, max_size=6), cycles=st.integers(1, 4))
@HYPOTHESIS
def test_weighted_round_robin_is_exact_over_every_cycle(weights: list[int], cycles: int) -> None:
    pick = SmoothWeightedRoundRobin()
    candidates = [snap(f"e{i}", weight=w) for i, w in enumerate(weights)]
    for _ in range(cycles):
        counts = Counter(pick(candidates, FixedRandom(0.0)).endpoint.name
                         for _ in range(sum(weights)))
        assert counts == {f"e{i}": w for i, w in enumerate(weights)}


def test_least_in_flight_picks_the_idlest_per_unit_of_weight() -> None:
    candidates = [snap("a", in_flight=3), snap("b", in_flight=1), snap("c", in_flight=5,
                                                                        weight=4)]
    assert least_in_flight(candidates, FixedRandom(0.0)).endpoint.name == "c"
    assert least_in_flight(candidates[:2], FixedRandom(0.0)).endpoint.name == "b"


def test_least_in_flight_breaks_ties_at_random() -> None:
    candidates = [snap("a"), snap("b"), snap("c")]
    picked = {least_in_flight(candidates, FixedRandom(x)).endpoint.name for x in (0, 0.4, 0.9)}
    assert picked == {"a", "b", "c"}


def test_power_of_two_choices_takes_the_lower_load_of_two() -> None:
    candidates = [snap("fast", latency=0.1, in_flight=2), snap("slow", latency=1.0)]
    assert power_of_two_choices(candidates, FixedRandom(0.0)).endpoint.name == "fast"
    assert power_of_two_choices(candidates, FixedRandom(0.7)).endpoint.name == "fast"


def test_an_unmeasured_endpoint_with_calls_out_is_the_last_choice() -> None:
    fresh, busy_fresh = snap("fresh"), snap("busy", in_flight=1)
    assert fresh.load == 0.0
    assert busy_fresh.load > snap("slow", latency=1e6, in_flight=1000).load


def simulate(latencies: dict[str, float], requests: int, seed: int) -> Counter[str]:
    """Requests every 10 ms through the default balancer; each lasts its endpoint's latency."""
    clock = FakeClock(0.0)
    balancer = Balancer([Endpoint(name) for name in latencies], clock=clock,
                        rng=random.Random(seed))
    pending: list[tuple[float, int, Lease]] = []
    counts: Counter[str] = Counter()
    for i in range(requests):
        arrival = i * 0.01
        while pending and pending[0][0] <= arrival:
            clock.now, _, done = heapq.heappop(pending)
            done.finish(latencies[done.endpoint.name])
        clock.now = arrival
        lease = balancer.pick()
        counts[lease.endpoint.name] += 1
        heapq.heappush(pending, (arrival + latencies[lease.endpoint.name], i, lease))
    return counts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_power_of_two_choices_sends_most_calls_to_the_fastest_endpoint(seed: int) -> None:
    counts = simulate({"fast": 0.05, "medium": 0.2, "slow": 1.0}, requests=3000, seed=seed)
    assert counts["fast"] > counts["medium"] > counts["slow"]
    assert counts["slow"] < 0.1 * sum(counts.values())


def test_peak_ewma_jumps_to_a_slower_observation_at_once() -> None:
    ewma = PeakEwma(decay=10.0).observe(0.1, now=0.0).observe(2.0, now=1.0)
    assert ewma.value(1.0) == 2.0


def test_peak_ewma_decays_toward_faster_observations_over_the_decay_time() -> None:
    ewma = PeakEwma(decay=10.0).observe(1.0, now=0.0)
    assert ewma.observe(0.0, now=10.0).value(10.0) == pytest.approx(1.0 / 2.718281828, rel=1e-6)
    blended = ewma.observe(0.5, now=1.0).value(1.0)
    assert 0.5 < blended < 1.0
    assert ewma.value(0.0) == 1.0  # observe returns a new value; the old one is unchanged


def test_one_healthy_tier_uses_only_its_healthy_endpoints() -> None:
    tier = [snap("a"), snap("b"), snap("c", healthy=False), snap("d", healthy=False)]
    assert names(select_candidates(tier)) == ["a", "b"]


def test_a_mostly_unhealthy_tier_panics_and_spreads_over_all_its_endpoints() -> None:
    tier = [snap("a"), snap("b", healthy=False), snap("c", healthy=False),
            snap("d", healthy=False)]
    assert names(select_candidates(tier)) == ["a", "b", "c", "d"]
    assert names(select_candidates(tier, panic_threshold=0.0)) == ["a"]


def test_a_panicking_balancer_spreads_load_over_the_whole_tier() -> None:
    healthy = {"a"}
    balancer = Balancer([Endpoint(n) for n in "abcd"], health=lambda e: e.name in healthy,
                        clock=FakeClock(), rng=random.Random(0))
    counts: Counter[str] = Counter()
    for _ in range(400):
        with balancer.pick() as lease:
            counts[lease.endpoint.name] += 1
    assert set(counts) == {"a", "b", "c", "d"}
    assert max(counts.values()) < 200


def test_traffic_fails_over_to_the_next_priority_tier() -> None:
    endpoints = [snap("primary", healthy=False, priority=0), snap("backup", priority=1)]
    assert names(select_candidates(endpoints)) == ["backup"]


def test_a_tier_below_the_panic_threshold_yields_to_a_healthy_lower_priority_tier() -> None:
    endpoints = [snap("p1", priority=0)] + [
        snap(f"p{i}", healthy=False, priority=0) for i in range(2, 5)
    ] + [snap("b1", priority=1), snap("b2", priority=1)]
    assert names(select_candidates(endpoints)) == ["b1", "b2"]


def test_when_every_tier_panics_the_lowest_tier_with_a_healthy_endpoint_takes_the_load() -> None:
    endpoints = [snap("p1", healthy=False, priority=0), snap("p2", healthy=False, priority=0),
                 snap("b1", priority=1), snap("b2", healthy=False, priority=1),
                 snap("b3", healthy=False, priority=1)]
    assert names(select_candidates(endpoints)) == ["b1", "b2", "b3"]


def test_exclude_sends_a_retry_to_another_healthy_endpoint() -> None:
    endpoints = [snap("a"), snap("b"), snap("c", healthy=False)]
    assert names(select_candidates(endpoints, exclude={"a"})) == ["b"]


def test_exclude_moves_to_the_next_healthy_tier_before_reusing_an_endpoint() -> None:
    endpoints = [snap("a"), snap("b", priority=1)]
    assert names(select_candidates(endpoints, exclude={"a"})) == ["b"]


def test_exclude_prefers_retrying_a_healthy_endpoint_over_an_unhealthy_one() -> None:
    endpoints = [snap("a"), snap("b", healthy=False)]
    assert names(select_candidates(endpoints, exclude={"a"})) == ["a"]


def test_exclude_falls_back_to_the_only_endpoint() -> None:
    balancer = Balancer([Endpoint("only")], clock=FakeClock())
    assert balancer.pick(exclude={"only"}).endpoint.name == "only"


def test_a_lease_counts_in_flight_until_finished_once() -> None:
    clock = FakeClock()
    balancer = Balancer([Endpoint("a")], clock=clock)
    first, second = balancer.pick(), balancer.pick()
    assert balancer.snapshot()[0].in_flight == 2
    first.finish()
    first.finish()
    assert balancer.snapshot()[0].in_flight == 1
    second.finish(0.25)
    assert balancer.snapshot()[0].latency == 0.25


def test_a_lease_as_context_manager_observes_latency_only_on_success() -> None:
    clock = FakeClock()
    balancer = Balancer([Endpoint("a")], clock=clock)
    with balancer.pick():
        clock.advance(0.5)
    assert balancer.snapshot()[0].latency == 0.5

    def timed_out_call() -> None:
        with balancer.pick():
            clock.advance(30.0)
            raise TimeoutError("upstream timed out")

    with pytest.raises(TimeoutError):
        timed_out_call()
    snapshot = balancer.snapshot()[0]
    assert snapshot.in_flight == 0
    assert snapshot.latency < 0.5


def test_the_strategy_is_chosen_by_name() -> None:
    balancer = Balancer([Endpoint("a", weight=2), Endpoint("b")],
                        BalancerPolicy(strategy="round_robin"), clock=FakeClock())
    picks = []
    for _ in range(3):
        lease = balancer.pick()
        picks.append(lease.endpoint.name)
        lease.finish()
    assert picks == ["a", "b", "a"]


@pytest.mark.parametrize(("build", "field"), [
    (lambda: BalancerPolicy(strategy="random"), "strategy"),
    (lambda: BalancerPolicy(panic_threshold=1.5), "panic_threshold"),
    (lambda: BalancerPolicy(latency_decay=0.0), "latency_decay"),
    (lambda: Endpoint(""), "name"),
    (lambda: Endpoint("a", weight=0), "weight"),
    (lambda: Endpoint("a", priority=-1), "priority"),
    (lambda: Balancer([]), "endpoints"),
    (lambda: Balancer([Endpoint("a"), Endpoint("a")]), "endpoints"),
])
def test_bad_settings_raise_config_error_naming_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field
