"""The breaker as a state machine under random calls, results, cool-downs and clock moves."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from resilkit import HYPOTHESIS, FakeClock

from rag_llm import errors
from rag_llm.resilience import (
    LEGAL_TRANSITIONS,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Permit,
    Transition,
)

POLICY = BreakerPolicy(consecutive_failures=3, ratio_min_calls=6, ratio_window=5.0,
                       open_duration=10.0, max_open_duration=40.0, probe_timeout=15.0,
                       default_cool_down=2.0, max_cool_down=8.0)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.transitions: list[Transition] = []
        self.breaker = CircuitBreaker(POLICY, clock=self.clock,
                                      on_transition=self.transitions.append)
        # Each permit held, with the epoch (the number of transitions so far) it came in.
        self.held: list[tuple[Permit, int]] = []
        self.probe: tuple[Permit, float] | None = None  # the live probe and when it began
        self.cooled_until = float("-inf")
        self.open_until = float("-inf")  # as the last transition to open announced it

    def _transitions_since(self, mark: int) -> list[tuple[BreakerState, BreakerState]]:
        return [(t.old, t.new) for t in self.transitions[mark:]]

    def _epoch(self) -> int:
        self.breaker.state  # noqa: B018 - brings a due open -> half-open transition about
        if self.transitions and self.transitions[-1].new is BreakerState.OPEN:
            self.open_until = self.transitions[-1].open_until or float("-inf")
        return len(self.transitions)

    @rule()
    def allow(self) -> None:
        epoch = self._epoch()
        state = self.breaker.state
        granted = self.breaker.allow()
        if self.clock.now < self.open_until:
            assert granted is None, "granted while open, before open_until"
        if self.clock.now < self.cooled_until:
            assert granted is None, "granted while cooling down"
        if granted is None:
            return
        self.held.append((granted, epoch))
        assert granted.probe == (state is BreakerState.HALF_OPEN)
        if granted.probe:
            if self.probe is not None:
                _, began = self.probe
                assert self.clock.now - began >= POLICY.probe_timeout, "two probes in flight"
            self.probe = (granted, self.clock.now)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000),
          outcome=st.sampled_from([Outcome.SUCCESS, Outcome.FAILURE, Outcome.FAILURE,
                                   Outcome.IGNORED]))
    def settle(self, index: int, outcome: Outcome) -> None:
        permit, epoch = self.held.pop(index % len(self.held))
        mark = self._epoch()
        before = self.breaker.snapshot()
        {Outcome.SUCCESS: permit.success, Outcome.FAILURE: permit.failure,
         Outcome.IGNORED: permit.release}[outcome]()
        self._forget_probe(permit)
        edges = self._transitions_since(mark)
        if epoch != mark:
            # Issued before the last transition: its verdict must change nothing.
            assert not edges
            assert self.breaker.snapshot() == before
        for edge in edges:
            # Only a failure opens the breaker; only a probe's success closes it.
            if edge[1] is BreakerState.OPEN:
                assert outcome is Outcome.FAILURE
            if edge[1] is BreakerState.CLOSED:
                assert outcome is Outcome.SUCCESS
                assert permit.probe

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1000), retry_after=st.none() | st.floats(0, 30))
    def rate_limited(self, index: int, retry_after: float | None) -> None:
        permit, _ = self.held.pop(index % len(self.held))
        state = self.breaker.state
        exc = errors.RateLimitError(provider="p", endpoint="e", status=429, message="",
                                    retry_after=retry_after)
        assert permit.record(exc) is Outcome.RATE_LIMITED
        wait = POLICY.default_cool_down if retry_after is None else retry_after
        self.cooled_until = max(self.cooled_until, self.clock.now + min(wait, 8.0))
        self._forget_probe(permit)
        assert self.breaker.state is state, "a 429 changed the breaker's health"

    @rule(seconds=st.floats(0, 20))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(early=st.sampled_from([0.0, 1e-6, 0.5]))
    def advance_to_open_until(self, early: float) -> None:
        self._epoch()
        target = self.open_until - early
        if target > self.clock.now:
            self.clock.advance(target - self.clock.now)

    @rule(count=st.integers(1, 20))
    def rejected_calls_change_nothing(self, count: int) -> None:
        before = self.breaker.snapshot()
        if before.state is BreakerState.OPEN:
            for _ in range(count):
                assert self.breaker.allow() is None
            assert self.breaker.snapshot() == before

    def _forget_probe(self, permit: Permit) -> None:
        if self.probe is not None and self.probe[0] is permit:
            self.probe = None

    @invariant()
    def transitions_follow_legal_edges_in_a_chain(self) -> None:
        previous, open_until = BreakerState.CLOSED, float("-inf")
        for transition in self.transitions:
            assert (transition.old, transition.new) in LEGAL_TRANSITIONS
            assert transition.old is previous
            if transition.new is BreakerState.HALF_OPEN:
                assert transition.at >= open_until, "half-open before open_until"
            if transition.new is BreakerState.OPEN:
                assert transition.open_until is not None
                open_until = transition.open_until
            previous = transition.new
        assert self.breaker.state is previous

    @invariant()
    def an_open_breaker_has_a_future_open_until(self) -> None:
        snapshot = self.breaker.snapshot()
        if snapshot.state is BreakerState.OPEN:
            assert snapshot.open_until is not None
            assert snapshot.open_until > self.clock.now
            assert snapshot.open_until - self.clock.now <= POLICY.max_open_duration
        else:
            assert snapshot.open_until is None
        if snapshot.state is not BreakerState.HALF_OPEN:
            self.probe = None
            assert not snapshot.probe_in_flight

    @invariant()
    def an_available_breaker_has_no_retry_at(self) -> None:
        if self.breaker.available:
            assert self.breaker.retry_at is None


TestBreakerStateMachine = BreakerMachine.TestCase
TestBreakerStateMachine.settings = settings(HYPOTHESIS, max_examples=100,
                                            stateful_step_count=60)
