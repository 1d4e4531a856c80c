"""A circuit breaker per endpoint: closed, open, then half-open with a single probe.

It opens after ``consecutive_failures`` failures in a row (Envoy's ``consecutive_5xx``) or when
at least ``failure_ratio`` of the calls of the last ``ratio_window`` seconds failed, once that
window holds ``ratio_min_calls`` calls. It stays open ``open_duration`` times the number of
recent openings, capped at ``max_open_duration`` (Envoy's outlier ejection: 30 s base, 300 s
cap). Then it lets one probe through; the probe's success closes it, its failure reopens it.

Every call holds a :class:`Permit` and settles it once: ``success()``, ``failure()``,
``release()`` (no verdict, as on cancellation) or ``record(exc)``, which classifies. Used as a
context manager a permit always settles, so a cancelled probe frees its slot. A 429 cools the
endpoint until its ``Retry-After`` without counting against its health.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from rag_llm import errors
from rag_llm.observability.events import get_logger
from rag_llm.resilience._common import Clock, check_number, retry_after_of

__all__ = [
    "DEFAULT_CONSECUTIVE_FAILURES",
    "DEFAULT_OPEN_DURATION",
    "LEGAL_TRANSITIONS",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Outcome",
    "Permit",
    "Transition",
    "classify_outcome",
]

DEFAULT_CONSECUTIVE_FAILURES: Final = 5
DEFAULT_FAILURE_RATIO: Final = 0.5
DEFAULT_RATIO_WINDOW: Final = 10.0
DEFAULT_RATIO_MIN_CALLS: Final = 20
DEFAULT_OPEN_DURATION: Final = 30.0
DEFAULT_MAX_OPEN_DURATION: Final = 300.0
# A probe that has not reported by then is taken as lost, and another may go.
DEFAULT_PROBE_TIMEOUT: Final = 60.0
DEFAULT_COOL_DOWN: Final = 1.0
DEFAULT_MAX_COOL_DOWN: Final = 60.0
_RATIO_SLICES: Final = 10
_log = get_logger("rag_llm.resilience")


class BreakerState(enum.StrEnum):
    """Closed: calls flow. Open: all refused. Half-open: one probe at a time decides."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


LEGAL_TRANSITIONS: Final = frozenset({
    (BreakerState.CLOSED, BreakerState.OPEN),
    (BreakerState.OPEN, BreakerState.HALF_OPEN),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    (BreakerState.HALF_OPEN, BreakerState.OPEN),
})


class Outcome(enum.StrEnum):
    """What a finished call says about the endpoint's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    RATE_LIMITED = "rate_limited"


def classify_outcome(exc: BaseException | None) -> Outcome:
    """Envoy's view: 5xx, connection errors and upstream timeouts are failures.

    Any other HTTP answer proves the endpoint alive. Cancellation, our own pool running dry,
    and errors that are not the upstream's say nothing about it.
    """
    if exc is None:
        return Outcome.SUCCESS
    if isinstance(exc, errors.RateLimitError):
        return Outcome.RATE_LIMITED
    if isinstance(exc, errors.ServerError | errors.MalformedResponseError):
        return Outcome.FAILURE
    if isinstance(exc, errors.UpstreamError):
        return Outcome.SUCCESS
    if isinstance(exc, errors.PoolTimeoutError):
        return Outcome.IGNORED
    if isinstance(exc, errors.TransportError):
        return Outcome.FAILURE
    return Outcome.IGNORED


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens, how long it stays open, and how long a 429 cools the endpoint.

    >>> BreakerPolicy(consecutive_failures=3).open_duration
    30.0
    """

    consecutive_failures: int = DEFAULT_CONSECUTIVE_FAILURES
    failure_ratio: float = DEFAULT_FAILURE_RATIO
    ratio_window: float = DEFAULT_RATIO_WINDOW
    ratio_min_calls: int = DEFAULT_RATIO_MIN_CALLS
    open_duration: float = DEFAULT_OPEN_DURATION
    max_open_duration: float = DEFAULT_MAX_OPEN_DURATION
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    default_cool_down: float = DEFAULT_COOL_DOWN
    max_cool_down: float = DEFAULT_MAX_COOL_DOWN
    classifier: Callable[[BaseException | None], Outcome] = field(
        default=classify_outcome, repr=False)

    def __post_init__(self) -> None:
        check_number("consecutive_failures", self.consecutive_failures, minimum=1, integer=True)
        check_number("failure_ratio", self.failure_ratio, minimum=0, maximum=1, exclusive=True)
        check_number("ratio_window", self.ratio_window, minimum=0, exclusive=True)
        check_number("ratio_min_calls", self.ratio_min_calls, minimum=1, integer=True)
        check_number("open_duration", self.open_duration, minimum=0, exclusive=True)
        check_number("max_open_duration", self.max_open_duration, minimum=self.open_duration)
        check_number("probe_timeout", self.probe_timeout, minimum=0, exclusive=True)
        check_number("default_cool_down", self.default_cool_down, minimum=0)
        check_number("max_cool_down", self.max_cool_down, minimum=0)


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, for events and metrics: ``open_until`` is set when it opened."""

    old: BreakerState
    new: BreakerState
    at: float
    open_until: float | None


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state as plain data, for dashboards and metrics."""

    state: BreakerState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    times_opened: int
    open_until: float | None
    cooled_until: float | None
    probe_in_flight: bool


class _RatioWindow:
    """Calls and failures of the last ``span`` seconds, in ring slices."""

    __slots__ = ("_calls", "_failures", "_slice", "_stamps")

    def __init__(self, span: float) -> None:
        self._slice = span / _RATIO_SLICES
        self._stamps = [-1] * _RATIO_SLICES
        self._calls = [0] * _RATIO_SLICES
        self._failures = [0] * _RATIO_SLICES

    def add(self, now: float, failed: bool) -> None:
        stamp = int(now // self._slice)
        slot = stamp % _RATIO_SLICES
        if self._stamps[slot] != stamp:
            self._stamps[slot], self._calls[slot], self._failures[slot] = stamp, 0, 0
        self._calls[slot] += 1
        self._failures[slot] += failed

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._slice) - _RATIO_SLICES
        live = [i for i, stamp in enumerate(self._stamps) if stamp > oldest]
        return sum(self._calls[i] for i in live), sum(self._failures[i] for i in live)

    def clear(self) -> None:
        self._stamps = [-1] * _RATIO_SLICES


class Permit:
    """Leave to make one call; settle it exactly once (later settlements do nothing)."""

    __slots__ = ("_breaker", "_epoch", "_settled", "_token", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, token: int | None) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._token = token
        self._settled = False
        self.probe = token is not None

    @property
    def settled(self) -> bool:
        return self._settled

    def success(self) -> None:
        self._breaker._settle(self, Outcome.SUCCESS, None)

    def failure(self) -> None:
        self._breaker._settle(self, Outcome.FAILURE, None)

    def release(self) -> None:
        """Give the permit back without a verdict: frees a half-open probe slot."""
        self._breaker._settle(self, Outcome.IGNORED, None)

    def record(self, exc: BaseException | None) -> Outcome:
        """Settle by the call's result (None for success), classified by the policy."""
        outcome = self._breaker.policy.classifier(exc)
        self._breaker._settle(self, outcome, retry_after_of(exc))
        return outcome

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._settled:
            self.record(exc)


class CircuitBreaker:
    """The breaker of one endpoint; thread-safe, on an injected monotonic clock.

    ``on_transition`` is called with each :class:`Transition` after the lock is released.
    """

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        # Bumped on every transition: a permit from an earlier epoch settles as nothing.
        self._epoch = 0
        self._consecutive = 0
        self._window = _RatioWindow(self.policy.ratio_window)
        self._times_opened = 0
        self._closed_since = clock()
        self._open_until: float | None = None
        self._cooled_until = float("-inf")
        self._probe_token: int | None = None
        self._probe_started = 0.0
        self._tokens = itertools.count()
        self._fired: list[Transition] = []

    def allow(self) -> Permit | None:
        """A permit to call now, or None: open, cooling down, or a probe already out."""
        # Every call passes here and through _settle: both take the lock by hand, without
        # the cost of the _locked() generator.
        with self._lock:
            now = self._clock()
            self._refresh(now)
            permit = self._allow(now)
            fired = self._take_fired()
        if fired:
            self._notify_all(fired)
        return permit

    def _allow(self, now: float) -> Permit | None:
        if now < self._cooled_until or self._state is BreakerState.OPEN:
            return None
        if self._state is BreakerState.CLOSED:
            return Permit(self, self._epoch, None)
        if self._probe_token is not None:
            return None
        self._probe_token = next(self._tokens)
        self._probe_started = now
        return Permit(self, self._epoch, self._probe_token)

    def cool_down(self, until: float) -> None:
        """Refuse permits until ``until`` (clock time) without counting a failure."""
        with self._locked():
            self._cooled_until = max(self._cooled_until, until)

    @property
    def state(self) -> BreakerState:
        with self._locked():
            return self._state

    @property
    def open_until(self) -> float | None:
        with self._locked():
            return self._open_until if self._state is BreakerState.OPEN else None

    @property
    def retry_at(self) -> float | None:
        """When a permit may next be granted; None if now, or once the probe out decides."""
        with self._locked() as now:
            times = [self._cooled_until] if self._cooled_until > now else []
            if self._state is BreakerState.OPEN and self._open_until is not None:
                times.append(self._open_until)
            return max(times) if times else None

    @property
    def available(self) -> bool:
        """Whether ``allow()`` would grant a permit now (without taking one)."""
        with self._lock:  # read at every balancer pick: no _locked() generator
            now = self._clock()
            self._refresh(now)
            fired = self._take_fired()
            available = not (now < self._cooled_until or self._state is BreakerState.OPEN) and (
                self._state is BreakerState.CLOSED or self._probe_token is None)
        if fired:
            self._notify_all(fired)
        return available

    def snapshot(self) -> BreakerSnapshot:
        with self._locked() as now:
            calls, failures = self._window.totals(now)
            return BreakerSnapshot(
                state=self._state, consecutive_failures=self._consecutive,
                window_calls=calls, window_failures=failures,
                times_opened=self._times_opened,
                open_until=self._open_until if self._state is BreakerState.OPEN else None,
                cooled_until=self._cooled_until if self._cooled_until > now else None,
                probe_in_flight=self._probe_token is not None)

    def _settle(self, permit: Permit, outcome: Outcome, retry_after: float | None) -> None:
        with self._lock:
            now = self._clock()
            self._refresh(now)
            self._record(permit, outcome, retry_after, now)
            fired = self._take_fired()
        if fired:
            self._notify_all(fired)

    def _record(self, permit: Permit, outcome: Outcome, retry_after: float | None,
                now: float) -> None:
        if permit._settled:
            return
        permit._settled = True
        if outcome is Outcome.RATE_LIMITED:
            wait = self.policy.default_cool_down if retry_after is None else retry_after
            until = now + min(wait, self.policy.max_cool_down)
            self._cooled_until = max(self._cooled_until, until)
        if permit._epoch != self._epoch:
            return  # issued before the last transition: its verdict is stale
        if permit.probe:
            self._settle_probe(permit, outcome, now)
        elif outcome is Outcome.SUCCESS:
            self._consecutive = 0
            self._window.add(now, failed=False)
        elif outcome is Outcome.FAILURE:
            self._consecutive += 1
            self._window.add(now, failed=True)
            if self._tripped(now):
                self._open(now)

    def _settle_probe(self, permit: Permit, outcome: Outcome, now: float) -> None:
        if permit._token != self._probe_token:
            return  # a probe given up as lost after probe_timeout
        self._probe_token = None
        if outcome is Outcome.SUCCESS:
            self._closed_since = now
            self._transition(BreakerState.CLOSED, now)
        elif outcome is Outcome.FAILURE:
            self._open(now)

    def _tripped(self, now: float) -> bool:
        if self._consecutive >= self.policy.consecutive_failures:
            return True
        calls, failures = self._window.totals(now)
        return calls >= self.policy.ratio_min_calls and (
            failures >= self.policy.failure_ratio * calls)

    def _open(self, now: float) -> None:
        policy = self.policy
        if self._state is BreakerState.CLOSED:
            # Like Envoy's ejection multiplier: one step forgotten per open_duration closed.
            healed = int((now - self._closed_since) // policy.open_duration)
            self._times_opened = max(self._times_opened - healed, 0)
        self._times_opened += 1
        duration = min(policy.open_duration * self._times_opened, policy.max_open_duration)
        self._open_until = now + duration
        self._transition(BreakerState.OPEN, now)

    def _transition(self, new: BreakerState, now: float) -> None:
        self._fired.append(Transition(self._state, new, now, self._open_until
                                      if new is BreakerState.OPEN else None))
        self._state = new
        self._epoch += 1
        self._consecutive = 0
        self._window.clear()
        self._probe_token = None

    def _refresh(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= (self._open_until or 0.0):
            self._transition(BreakerState.HALF_OPEN, now)
        if (self._state is BreakerState.HALF_OPEN and self._probe_token is not None
                and now - self._probe_started >= self.policy.probe_timeout):
            self._probe_token = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[float]:
        """Hold the lock with the state brought up to now; report transitions after it."""
        with self._lock:
            now = self._clock()
            self._refresh(now)
            try:
                yield now
            finally:
                fired = self._take_fired()
        self._notify_all(fired)

    def _take_fired(self) -> Sequence[Transition]:
        """Transitions not yet reported; the caller holds the lock."""
        if not self._fired:
            return ()
        fired, self._fired = self._fired, []
        return fired

    def _notify_all(self, fired: Sequence[Transition]) -> None:
        for transition in fired:
            self._notify(transition)

    def _notify(self, transition: Transition) -> None:
        if self._on_transition is None:
            return
        try:
            self._on_transition(transition)
        except Exception:
            # A listener's bug must not cost the caller its permit.
            _log.exception("breaker_listener_failed", transition=str(transition))
