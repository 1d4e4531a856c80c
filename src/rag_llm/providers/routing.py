"""Where each attempt of a call goes, and whether a failed attempt is tried again.

A provider fronts one or more endpoints, each an :class:`Upstream` with its own pool, circuit
breaker and client-side rate limiter. A call runs as a series of attempts::

    async for attempt in router.attempts(cost):
        async with attempt:
            return await send(attempt.upstream)

Each attempt picks an endpoint with the balancer (priority tiers, panic mode, power of two
choices over peak EWMA latency; endpoints this call already tried are left out while others
are healthy), takes a breaker permit and a rate-limit slot, and runs under the call's single
deadline. When it fails, the breaker and balancer hear of it, then :class:`RetryState` decides,
drawing on the provider's retry budget: the attempt sleeps the backoff and the loop goes on,
or the error propagates with a note saying why it was not retried. A cancelled call is never
retried. Nothing that the router refuses by itself (open circuit, local rate limit) counts
against an endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from rag_llm.config import EndpointConfig, PoolLimits, ProviderConfig, Timeouts
from rag_llm.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    LocalRateLimitError,
    RagLLMError,
    RequestTimeoutError,
)
from rag_llm.observability.events import get_logger
from rag_llm.observability.stats import Ledger
from rag_llm.pool import PROBE, ClientPool, PoolState
from rag_llm.providers._deadlines import Deadline, watch_deadline
from rag_llm.providers.admission import EndpointAdmission
from rag_llm.providers.openai import OpenAIAPI
from rag_llm.resilience._common import retry_after_of
from rag_llm.resilience.adaptive import AdaptivePolicy
from rag_llm.resilience.balancer import Balancer, Endpoint, Lease
from rag_llm.resilience.breaker import BreakerState, CircuitBreaker, Permit, Transition
from rag_llm.resilience.budget import RetryBudget
from rag_llm.resilience.health import HealthChecker, connect_probe
from rag_llm.resilience.limiter import RateLimiter, RateLimiterBackend
from rag_llm.resilience.retry import RetryDecision, RetryState, RetryVerdict
from rag_llm.transport import Request, TransportSettings, get_backend
from rag_llm.transport._tls import ssl_context

if TYPE_CHECKING:
    from rag_llm.resilience.health import HealthCheckPolicy

__all__ = ["Attempt", "EndpointState", "Router", "RouterSnapshot", "RoutingCounts", "Upstream",
           "counted_routing", "live_routers"]

_log = get_logger("rag_llm.resilience")
# A capped timeout that fires this close to the deadline is the deadline's doing.
_DEADLINE_SLACK: Final = 0.05
_MIN_TIMEOUT: Final = 0.001
# Budget-exhausted warnings are logged at most this often per provider.
_WARN_EVERY: Final = 10.0


class Upstream:
    """One endpoint of a provider: its API adapter, pool, breaker and rate limiter."""

    __slots__ = ("admission", "api", "breaker", "config", "endpoint", "limiter", "name", "pool")

    def __init__(self, config: EndpointConfig, api: OpenAIAPI, pool: ClientPool,
                 breaker: CircuitBreaker | None,
                 admission: EndpointAdmission | None = None) -> None:
        self.config = config
        self.name = config.name
        self.api = api
        self.pool = pool
        self.breaker = breaker
        # The adaptive concurrency gate (adaptive_concurrency), else None.
        self.admission = admission
        # Behind the backend protocol: a limiter shared across processes can take its place.
        self.limiter: RateLimiterBackend | None = (
            RateLimiter(config.rate_limits) if config.rate_limits else None)
        self.endpoint = Endpoint(config.name, weight=config.weight, priority=config.priority)

    def __repr__(self) -> str:
        return f"<Upstream {self.name!r} pool={self.pool.state.value}>"


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


class _Counts:
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


_COUNTS: Final[Ledger[tuple[str, _Counts], RoutingCounts]] = Ledger(
    lambda held: [held[1].read(held[0])], _sum_counts)


def counted_routing() -> list[RoutingCounts]:
    """The routing counters of every router this process has had, collected ones folded."""
    return _COUNTS.readings()


class Router:
    """The endpoints of one provider and the policies that spread and retry its calls."""

    def __init__(self, config: ProviderConfig, api_class: type[OpenAIAPI]) -> None:
        self.provider = config.name
        self.config = config
        self.policy = config.retry
        self.budget = RetryBudget(config.retry_budget) if config.retry_budget else None
        settings = TransportSettings(
            provider=config.name, limits=config.limits, timeouts=config.timeouts,
            http2=config.http2, verify=config.verify,
            slow_request_s=config.slow_request_seconds)
        self.upstreams = {endpoint.name: _upstream(config, endpoint, api_class, settings)
                          for endpoint in config.endpoints}
        self.primary = next(iter(self.upstreams.values()))
        self._single = self.primary if len(self.upstreams) == 1 else None
        # Nothing the router owns refers back to it: a provider dropped unclosed is
        # collected at once, it and its pools warn, and its health checks stop.
        self._health_view = _HealthView(self.upstreams)
        self.balancer = Balancer([u.endpoint for u in self.upstreams.values()],
                                 config.load_balancer, health=self._health_view)
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._budget_warned = -math.inf
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        # The health checks' own pools, by endpoint name (health_check with a path).
        self._health_pools: dict[str, ClientPool] = {}
        self._health_lock = threading.Lock()
        self._closed = False
        _LIVE.add(self)
        _COUNTS.track(self, (self.provider, self._counts))

    # -- calls -------------------------------------------------------------------

    def attempts(self, cost: float = 0.0) -> Attempts:
        """The attempts of one call; iterate with ``async for`` or ``for``."""
        self.start_health_checks()
        if self.budget is not None:
            self.budget.deposit()
        return Attempts(self, cost)

    def _choose(self, call: Attempts) -> Attempt | dict[str, tuple[str, float]]:
        """An attempt on the best endpoint that will take it, or why each refused.

        Refusals map an endpoint to its reason (see :meth:`_admit`) and the seconds to wait.
        """
        refused: dict[str, tuple[str, float]] = {}
        exclude = set(call.tried)
        for _ in range(2 * len(self.upstreams)):
            if self._single is not None:
                upstream, lease = self._single, None
            else:
                lease = self.balancer.pick(exclude=exclude | refused.keys())
                upstream = self.upstreams[lease.endpoint.name]
            if upstream.name in refused:
                if lease is not None:
                    lease.finish()
                if exclude:  # endpoints this call tried may still take it
                    exclude = set()
                    continue
                break
            refusal = self._admit(upstream, call.cost)
            if isinstance(refusal, tuple):
                if lease is not None:
                    lease.finish()
                refused[upstream.name] = refusal
                continue
            return Attempt(call, upstream, lease, refusal)
        return refused

    def _admit(self, upstream: Upstream, cost: float) -> Permit | tuple[str, float] | None:
        """The breaker permit (None without a breaker), or a refusal and its wait.

        Refusals: ``circuit_open`` (open, or its half-open probe is out), ``cooling`` (a 429's
        Retry-After is running) and ``rate_limited`` (the local limit); the last two are
        worth waiting for.
        """
        permit = None
        breaker = upstream.breaker
        if breaker is not None:
            permit = breaker.allow()
            if permit is None:
                retry_at = breaker.retry_at
                if retry_at is None or breaker.state is BreakerState.OPEN:
                    return "circuit_open", 0.0 if retry_at is None else retry_at - time.monotonic()
                return "cooling", retry_at - time.monotonic()
        if upstream.limiter is not None:
            limited = upstream.limiter.acquire(cost)
            if limited is not None:
                if permit is not None:
                    permit.release()
                return "rate_limited", limited
        return permit

    def _refusal_wait(self, call: Attempts, refused: dict[str, tuple[str, float]]) -> float:
        """How long to wait for an endpoint to take the call, or raise: never past the deadline."""
        remaining = call.remaining()
        waits = {name: wait for name, (why, wait) in refused.items() if why != "circuit_open"}
        if waits:
            name, wait = min(waits.items(), key=lambda item: item[1])
            if remaining is None or wait < remaining:
                return max(wait, 0.0)
            if refused[name][0] == "rate_limited":
                self._count_rejected("rate_limited")
                raise LocalRateLimitError(self.provider, self.upstreams[name].api.endpoint, wait)
        self._count_rejected("circuit_open")
        if call.last_error is not None:
            raise call.last_error
        raise CircuitOpenError(self.provider, {
            self.upstreams[name].api.endpoint: max(wait, 0.0)
            for name, (_, wait) in refused.items()})

    def _settle(self, attempt: Attempt, exc: BaseException | None) -> None:
        if attempt.lease is not None:
            attempt.lease.finish(time.monotonic() - attempt.started if exc is None else None)
        if attempt.permit is not None:
            if exc is None or isinstance(exc, Exception):
                attempt.permit.record(exc)
            else:
                attempt.permit.release()  # cancelled: says nothing about the endpoint
        label = "ok" if exc is None else _label(exc)
        with self._counts.lock:
            self._counts.attempts[(attempt.upstream.name, label)] += 1

    def _decide(self, call: Attempts, exc: Exception) -> RetryDecision:
        decision = call.state.decide(exc, remaining=call.remaining(), budget=self.budget)
        if decision.retry and retry_after_of(exc) is not None and self._other_available(call):
            # Retry-After speaks for the endpoint that sent it, which now cools down; another
            # endpoint can take the retry after the ordinary backoff.
            delay = self.policy.backoff_ceiling(call.state.attempt) * self._rng.random()
            decision = RetryDecision(RetryVerdict.RETRY, delay,
                                     f"retry on another endpoint in {delay:.3f} s")
        if decision.retry and not self._any_available_within(decision.delay):
            decision = RetryDecision(
                RetryVerdict.NOT_RETRYABLE, 0.0,
                "no endpoint can take a retry in time: every circuit is open")
        with self._counts.lock:
            if decision.retry:
                self._counts.retries += 1
            else:
                self._counts.gave_up[decision.verdict.value] += 1
        if decision.verdict is RetryVerdict.BUDGET:
            self._warn_budget()
        return decision

    def _other_available(self, call: Attempts) -> bool:
        return any(name not in call.tried and (u.breaker is None or u.breaker.available)
                   for name, u in self.upstreams.items())

    def _any_available_within(self, seconds: float) -> bool:
        horizon = time.monotonic() + seconds
        for upstream in self.upstreams.values():
            breaker = upstream.breaker
            if breaker is None or breaker.available:
                return True
            retry_at = breaker.retry_at
            if retry_at is not None and retry_at <= horizon:
                return True
        return False

    def _warn_budget(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._budget_warned < _WARN_EVERY:
                return
            self._budget_warned = now
        _log.warning("retry_budget_exhausted", provider=self.provider)

    def _count_rejected(self, reason: str) -> None:
        with self._counts.lock:
            self._counts.rejected[reason] += 1

    # -- health checks and warm-up --------------------------------------------------

    def start_health_checks(self) -> None:
        """Start the active health checks, if configured; idempotent, cheap when running."""
        policy = self.config.health_check
        if policy is None or self._health_view.checker is not None or self._closed:
            return
        with self._health_lock:
            if self._health_view.checker is not None or self._closed:
                return
            pools: dict[str, ClientPool] = {}
            probes = {name: self._probe(upstream, policy, pools)
                      for name, upstream in self.upstreams.items()}
            # The checker's threads hold neither the router nor the provider, and close
            # the probes' pools as they end, however the checks were stopped.
            checker = HealthChecker(probes, policy, name=self.provider,
                                    on_change=functools.partial(_health_changed, self.provider),
                                    on_stop=functools.partial(_close_pools, pools.values()))
            checker.start()
            self._health_pools = pools
            self._health_view.checker = checker

    def _probe(self, upstream: Upstream, policy: HealthCheckPolicy,
               pools: dict[str, ClientPool]) -> Callable[[], bool]:
        if policy.path is None:
            context = ssl_context(self.config.verify)
            return connect_probe(upstream.config.base_url, timeout=policy.timeout,
                                 ssl_context=context if not isinstance(context, bool) else None)
        # A pool of its own, with the check's timeout, so a check never waits behind calls.
        pool = ClientPool(TransportSettings(
            provider=f"{self.provider}-health", limits=PoolLimits(1, 1, policy.interval * 2),
            timeouts=Timeouts(connect=policy.timeout, read=policy.timeout,
                              write=policy.timeout, pool=policy.timeout),
            http2=False, verify=self.config.verify), get_backend("httpx2"),
            endpoint=upstream.name, role=PROBE)
        pools[upstream.name] = pool
        request = upstream.api.get_request(policy.path)

        def probe() -> bool:
            return pool.sync_transport().send(request).status < 500

        return probe

    async def awarmup(self, connections: int) -> None:
        """Open ``connections`` connections to every endpoint now, with cheap GETs."""
        if connections <= 0:
            return
        for upstream in self.upstreams.values():
            transport = await upstream.pool.async_transport()
            request = upstream.api.get_request("models")
            await asyncio.gather(*(transport.send(request) for _ in range(connections)),
                                 return_exceptions=True)

    def warmup(self, connections: int) -> None:
        """Sync twin of :meth:`awarmup`, for the sync client's pool."""
        if connections <= 0:
            return
        from concurrent.futures import ThreadPoolExecutor, wait

        with ThreadPoolExecutor(connections) as executor:
            for upstream in self.upstreams.values():
                transport = upstream.pool.sync_transport()
                request = upstream.api.get_request("models")
                wait([executor.submit(_quietly, transport.send, request)
                      for _ in range(connections)])

    # -- state and shutdown -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def pools(self) -> list[ClientPool]:
        """Every pool of this provider: each endpoint's, then the health checks' own."""
        with self._health_lock:
            probes = list(self._health_pools.values())
        return [*(u.pool for u in self.upstreams.values()), *probes]

    def snapshot(self) -> RouterSnapshot:
        checker = self._health_view.checker
        health = checker.snapshot() if checker is not None else {}
        balanced = {s.endpoint.name: s for s in self.balancer.snapshot()}
        counts = self._counts.read(self.provider)
        attempts = counts.attempts
        state = (counts.retries, dict(counts.gave_up), dict(counts.rejected))
        endpoints = []
        for name, upstream in self.upstreams.items():
            snapshot = balanced[name]
            endpoints.append(EndpointState(
                name=name, url=upstream.api.endpoint, healthy=health.get(name, True),
                breaker=upstream.breaker.state.value if upstream.breaker else "disabled",
                in_flight=snapshot.in_flight, latency=snapshot.latency,
                attempts={label: count for (n, label), count in attempts.items() if n == name}))
        return RouterSnapshot(
            provider=self.provider, endpoints=endpoints, retries=state[0], gave_up=state[1],
            rejected=state[2],
            budget_available=None if self.budget is None else self.budget.available())

    def release_when_collected(self) -> Callable[[], bool]:
        """For the owner's finalizer: stops the health checks without waiting (their last
        thread closes their pools) and says whether anything was left open.

        It refers to the router's parts, never to the router, so it cannot keep it alive.
        """
        return functools.partial(_abandon, self._health_view)

    def _stop_health_checks(self) -> list[ClientPool]:
        with self._health_lock:
            self._closed = True
            checker, self._health_view.checker = self._health_view.checker, None
            pools = list(self._health_pools.values())
        if checker is not None:
            checker.stop()
        return pools

    async def aclose(self) -> None:
        pools = self._stop_health_checks()
        await asyncio.gather(*(u.pool.aclose() for u in self.upstreams.values()),
                             *(p.aclose() for p in pools))

    def close(self) -> None:
        for pool in [*self._stop_health_checks(), *(u.pool for u in self.upstreams.values())]:
            pool.close()


def _upstream(config: ProviderConfig, endpoint: EndpointConfig, api_class: type[OpenAIAPI],
              settings: TransportSettings) -> Upstream:
    """One endpoint's adapter, pool, breaker and gate, as the provider's config says."""
    own = replace(config, base_url=endpoint.base_url, api_key=endpoint.api_key,
                  api_version=endpoint.api_version, deployment=endpoint.deployment,
                  endpoints=(endpoint,))
    breaker = None if config.circuit_breaker is None else CircuitBreaker(
        config.circuit_breaker,
        on_transition=functools.partial(_breaker_changed, config.name, endpoint.name))
    pool = ClientPool(settings, get_backend(config.transport, http2=config.http2),
                      endpoint=endpoint.name)
    admission = None
    if config.adaptive_concurrency:
        admission = EndpointAdmission(pool, AdaptivePolicy(
            max_limit=config.limits.max_connections,
            initial_limit=max(config.limits.max_keepalive_connections, 1)))
    return Upstream(endpoint, api_class(own), pool, breaker, admission)


class _HealthView:
    """Whether the balancer may count an endpoint healthy: breaker and active check agree."""

    __slots__ = ("checker", "upstreams")

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = upstreams
        self.checker: HealthChecker | None = None

    def __call__(self, endpoint: Endpoint) -> bool:
        breaker = self.upstreams[endpoint.name].breaker
        if breaker is not None and not breaker.available:
            return False
        checker = self.checker
        return checker is None or checker.healthy(endpoint.name)


def _abandon(view: _HealthView) -> bool:
    """Stop ``view``'s checks without joining; True if they ran or a pool was opened."""
    checker, view.checker = view.checker, None
    if checker is not None:
        checker.stop(timeout=0)
    return checker is not None or any(
        u.pool.state is PoolState.OPEN for u in view.upstreams.values())


def _close_pools(pools: Iterable[ClientPool]) -> None:
    for pool in pools:
        try:
            pool.close()
        except Exception:
            _log.exception("health_pool_close_failed", provider=pool.provider)


def _breaker_changed(provider: str, endpoint: str, transition: Transition) -> None:
    fields: dict[str, Any] = {}
    if transition.open_until is not None:
        fields["open_for"] = round(transition.open_until - transition.at, 3)
    log = _log.warning if transition.new is BreakerState.OPEN else _log.info
    log("circuit_breaker_state_changed", provider=provider, endpoint=endpoint,
        old=transition.old.value, new=transition.new.value, **fields)


def _health_changed(provider: str, endpoint: str, healthy: bool) -> None:
    log = _log.info if healthy else _log.warning
    log("endpoint_health_changed", provider=provider, endpoint=endpoint, healthy=healthy)


_LIVE: Final[weakref.WeakSet[Router]] = weakref.WeakSet()


def live_routers() -> list[Router]:
    """Every router of a provider that is still referenced, for metrics."""
    return list(_LIVE)


def _quietly(send: Callable[[Any], Any], request: Any) -> None:
    # Warm-up is best effort: the first call reports a real failure.
    with contextlib.suppress(RagLLMError):
        send(request)


def _label(exc: BaseException) -> str:
    if not isinstance(exc, Exception):
        return "cancelled"
    status = getattr(exc, "status", None)
    return str(status) if isinstance(status, int) else type(exc).__name__


class Attempts:
    """One call's attempts: ``async for`` (or ``for``) yields the next :class:`Attempt`.

    A failed attempt that is retried has already slept its backoff when the loop asks for
    the next one; the loop ends by ``return`` from the body or by the error propagating.
    """

    __slots__ = ("cost", "deadline", "last_error", "router", "state", "tried")

    def __init__(self, router: Router, cost: float) -> None:
        self.router = router
        self.cost = cost
        deadline = router.config.deadline
        self.deadline = None if deadline is None else time.monotonic() + deadline
        self.state = RetryState(router.policy)
        self.tried: list[str] = []
        self.last_error: BaseException | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        while True:
            chosen = self.router._choose(self)
            if isinstance(chosen, Attempt):
                return chosen
            await asyncio.sleep(self.router._refusal_wait(self, chosen))

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> Attempt:
        while True:
            chosen = self.router._choose(self)
            if isinstance(chosen, Attempt):
                return chosen
            time.sleep(self.router._refusal_wait(self, chosen))

    def _failed(self, attempt: Attempt, exc: BaseException) -> RetryDecision | None:
        """Settle a failed attempt; the retry decision, or None when it must not retry."""
        self.router._settle(attempt, exc)
        if not isinstance(exc, Exception):
            return None  # cancelled, or the caller abandoned a stream: never retried
        self.last_error = exc
        self.tried.append(attempt.upstream.name)
        decision = self.router._decide(self, exc)
        if not decision.retry:
            if self.state.attempt > 1 or decision.verdict in (RetryVerdict.BUDGET,
                                                               RetryVerdict.DEADLINE):
                exc.add_note(f"rag-llm: not retried after attempt {self.state.attempt}: "
                             f"{decision.reason}")
            return None
        _log.info("retry_scheduled", provider=self.router.provider,
                  endpoint=attempt.upstream.name, attempt=self.state.attempt,
                  delay=round(decision.delay, 3), error=_label(exc))
        self.state = self.state.increment()
        return decision


class Attempt:
    """One try of a call on ``upstream``: ``async with`` (or ``with``) it around the send.

    On the way out it settles the breaker and balancer, and when the call may be retried it
    sleeps the backoff and swallows the error so the caller's loop makes the next attempt.
    The async form also enforces the call's deadline.
    """

    __slots__ = ("_deadline", "call", "lease", "permit", "started", "upstream")

    def __init__(self, call: Attempts, upstream: Upstream, lease: Lease | None,
                 permit: Permit | None) -> None:
        self.call = call
        self.upstream = upstream
        self.lease = lease
        self.permit = permit
        self.started = time.monotonic()
        self._deadline: Deadline | None = None

    async def __aenter__(self) -> Attempt:
        remaining = self.call.remaining()
        if remaining is not None:
            self._deadline = watch_deadline(remaining)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if self._deadline is not None and self._deadline.expired_with(exc):
            self._deadline_passed()
        delay = self._finish(exc)
        if delay is None:
            return False
        await asyncio.sleep(delay)
        return True

    def _finish(self, exc: BaseException | None) -> float | None:
        """Settle this attempt; the backoff before the next one, or None to let it end."""
        if exc is None:
            self.call.router._settle(self, None)
            return None
        decision = self.call._failed(self, exc)
        return None if decision is None else decision.delay

    def _deadline_passed(self, cause: BaseException | None = None) -> None:
        error = DeadlineExceededError(
            f"no answer within deadline={self.call.router.config.deadline:g}s "
            f"(attempt {self.call.state.attempt})",
            provider=self.call.router.provider, endpoint=self.upstream.api.endpoint)
        self.call.router._settle(self, error)  # a hung upstream counts as failing
        counts = self.call.router._counts
        with counts.lock:
            counts.gave_up[RetryVerdict.DEADLINE.value] += 1
        raise error from cause

    def capped(self, request: Request) -> Request:
        """``request`` with its timeouts capped by the time left (sync calls): a thread
        cannot be interrupted, so the deadline has to reach the socket."""
        remaining = self.call.remaining()
        if remaining is None or remaining >= self.call.router.config.timeouts.read:
            return request
        return replace(request, timeout=max(remaining, _MIN_TIMEOUT))

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        remaining = self.call.remaining()
        if isinstance(exc, RequestTimeoutError) and remaining is not None and \
                remaining <= _DEADLINE_SLACK:
            self._deadline_passed(exc)
        delay = self._finish(exc)
        if delay is None:
            return False
        time.sleep(delay)
        return True
