"""Where each attempt of a call goes, and whether a failed attempt is tried again.

A provider fronts one or more endpoints, each an :class:`~rag_llm.calls.endpoint.Upstream`
with its own pool, circuit breaker and client-side rate limiter. A call runs as a series of
attempts (:mod:`rag_llm.calls.attempts`).

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
import math
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from rag_llm.adapters import AdapterFactory
from rag_llm.calls.attempts import Attempt, Attempts, outcome_label
from rag_llm.calls.counts import COUNTS, Counts, EndpointState, RouterSnapshot
from rag_llm.calls.endpoint import Upstream, build_upstream
from rag_llm.calls.health import HealthChecks
from rag_llm.calls.sync import EndpointSync
from rag_llm.config import ProviderConfig
from rag_llm.errors import (
    CircuitOpenError,
    LocalRateLimitError,
    RagLLMError,
    RequestExceedsBurstError,
)
from rag_llm.observability.events import get_logger
from rag_llm.pool import ClientPool
from rag_llm.resilience._common import retry_after_of
from rag_llm.resilience.balancer import Balancer
from rag_llm.resilience.breaker import BreakerState, Permit
from rag_llm.resilience.budget import RetryBudget
from rag_llm.resilience.retry import RetryDecision, RetryVerdict
from rag_llm.state import StateBackend
from rag_llm.transport import TransportSettings

__all__ = ["Router", "live_routers"]

_log = get_logger("rag_llm.resilience")
# Budget-exhausted warnings are logged at most this often per provider.
_WARN_EVERY: Final = 10.0


class Router:
    """The endpoints of one provider and the policies that spread and retry its calls."""

    def __init__(self, config: ProviderConfig, api_class: AdapterFactory) -> None:
        self.provider = config.name
        self.config = config
        self.policy = config.retry
        self.budget = RetryBudget(config.retry_budget) if config.retry_budget else None
        settings = TransportSettings(
            provider=config.name, limits=config.limits, timeouts=config.timeouts,
            http2=config.http2, verify=config.verify,
            slow_request_s=config.slow_request_seconds,
            max_response_bytes=config.max_response_bytes)
        # With a Redis, the limits every process shares (else None: all in this process).
        self.state = None if config.state is None else StateBackend(
            config.state, provider=config.name, lease_ttl=config.lease_ttl)
        # With a Redis, breaker and health verdicts every process shares.
        self.sync = None if self.state is None else EndpointSync(
            self.state, [e.name for e in config.endpoints], config.state_sync_interval)
        self.upstreams = {endpoint.name: build_upstream(config, endpoint, api_class, settings,
                                                        self.state, self.sync)
                          for endpoint in config.endpoints}
        self.primary = next(iter(self.upstreams.values()))
        self._single = self.primary if len(self.upstreams) == 1 else None
        # Nothing the router owns refers back to it: a provider dropped unclosed is
        # collected at once, it and its pools warn, and its health checks stop.
        self.health = HealthChecks(config, self.upstreams, self.sync)
        self.balancer = Balancer([u.endpoint for u in self.upstreams.values()],
                                 config.load_balancer, health=self.health.view)
        self._lock = threading.Lock()
        self._counts = Counts()
        self._budget_warned = -math.inf
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        _LIVE.add(self)
        COUNTS.track(self, (self.provider, self._counts))

    # -- calls -------------------------------------------------------------------

    def attempts(self, cost: float = 0.0) -> Attempts:
        """The attempts of one call; iterate with ``async for`` or ``for``."""
        self.health.start()
        if self.sync is not None:
            self.sync.due()
        if self.budget is not None:
            self.budget.deposit()
        return Attempts(self, cost)

    def _choose(self, call: Attempts,
                refused: dict[str, tuple[str, float]]) -> Attempt | dict[str, tuple[str, float]]:
        """An attempt on the best endpoint that will take it, or why each refused.

        ``refused`` holds this round's refusals so far, and gains the ones met here: an
        endpoint's reason (see :meth:`_admit`) and the seconds to wait.
        """
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

    def _last_choice(self, refused: dict[str, tuple[str, float]]) -> bool:
        """Whether every other endpoint has refused this round: a call the shared limit
        refuses here will wait, and may hold its place (see :class:`Ask`)."""
        return len(refused) >= len(self.upstreams) - 1

    def _admit_shared(self, attempt: Attempt,
                      hold: bool) -> dict[str, tuple[str, float]] | None:
        """The shared rate limit's say on a chosen attempt: None to go, else its refusal.
        A lease taken in the same round trip goes with the attempt."""
        shared = attempt.upstream.shared
        if shared is None:
            return None
        try:
            wait, attempt.slot = shared.admit(attempt.call.cost, attempt.call.ticket(), hold)
        except BaseException:
            self._withdraw(attempt)
            raise
        return self._shared_refusal(attempt, wait)

    async def _aadmit_shared(self, attempt: Attempt,
                             hold: bool) -> dict[str, tuple[str, float]] | None:
        """:meth:`_admit_shared` for async calls: Redis is awaited, never blocking the loop."""
        shared = attempt.upstream.shared
        if shared is None:
            return None
        try:
            wait, attempt.slot = await shared.aadmit(attempt.call.cost, attempt.call.ticket(),
                                                     hold)
        except BaseException:
            self._withdraw(attempt)
            raise
        return self._shared_refusal(attempt, wait)

    def _shared_refusal(self, attempt: Attempt,
                        wait: float | None) -> dict[str, tuple[str, float]] | None:
        if wait is None:
            return None
        self._withdraw(attempt)
        return {attempt.upstream.name: ("rate_limited", wait)}

    @staticmethod
    def _withdraw(attempt: Attempt) -> None:
        """Give back what choosing ``attempt`` took, saying nothing about the endpoint."""
        attempt.release_slot()
        if attempt.lease is not None:
            attempt.lease.finish()
        if attempt.permit is not None:
            attempt.permit.release()

    def _burst_error(self, name: str, cost: float) -> RequestExceedsBurstError:
        upstream = self.upstreams[name]
        limits = upstream.config.rate_limits
        limit, burst = "requests_per_minute", None
        if limits is not None:
            tokens = limits.capacity("tokens")
            if tokens is not None and cost > tokens:
                limit, burst = "tokens_per_minute", tokens
            else:
                burst = limits.capacity("requests")
        return RequestExceedsBurstError(self.provider, upstream.api.endpoint, cost, limit, burst)

    def _refusal_wait(self, call: Attempts, refused: dict[str, tuple[str, float]]) -> float:
        """How long to wait for an endpoint to take the call, or raise: never past the deadline."""
        remaining = call.remaining()
        waits = {name: wait for name, (why, wait) in refused.items() if why != "circuit_open"}
        if waits:
            name, wait = min(waits.items(), key=lambda item: item[1])
            if math.isinf(wait) and refused[name][0] == "rate_limited":
                self._count_rejected("exceeds_burst")
                raise self._burst_error(name, call.cost)
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
        attempt.release_slot()  # taken at admission, never sent
        if attempt.lease is not None:
            attempt.lease.finish(time.monotonic() - attempt.started if exc is None else None)
        if attempt.permit is not None:
            if exc is None or isinstance(exc, Exception):
                attempt.permit.record(exc)
            else:
                attempt.permit.release()  # cancelled: says nothing about the endpoint
        label = "ok" if exc is None else outcome_label(exc)
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

    # -- warm-up ----------------------------------------------------------------------

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
        return self.health.closed

    def pools(self) -> list[ClientPool]:
        """Every pool of this provider: each endpoint's, then the health checks' own."""
        return [*(u.pool for u in self.upstreams.values()), *self.health.pools()]

    def snapshot(self) -> RouterSnapshot:
        view = self.health.view
        balanced = {s.endpoint.name: s for s in self.balancer.snapshot()}
        counts = self._counts.read(self.provider)
        attempts = counts.attempts
        state = (counts.retries, dict(counts.gave_up), dict(counts.rejected))
        endpoints = []
        for name, upstream in self.upstreams.items():
            snapshot = balanced[name]
            endpoints.append(EndpointState(
                name=name, url=upstream.api.endpoint, healthy=view.checked(name),
                breaker=upstream.breaker.state.value if upstream.breaker else "disabled",
                in_flight=snapshot.in_flight, latency=snapshot.latency,
                attempts={label: count for (n, label), count in attempts.items() if n == name}))
        return RouterSnapshot(
            provider=self.provider, endpoints=endpoints, retries=state[0], gave_up=state[1],
            rejected=state[2],
            budget_available=None if self.budget is None else self.budget.available())


    def release_when_collected(self) -> Callable[[], bool]:
        """For the owner's finalizer (see :meth:`HealthChecks.release_when_collected`)."""
        return self.health.release_when_collected()

    async def aclose(self) -> None:
        pools = self.health.stop()
        await asyncio.gather(*(u.pool.aclose() for u in self.upstreams.values()),
                             *(p.aclose() for p in pools))
        if self.sync is not None:
            await asyncio.to_thread(self.sync.stop)
        if self.state is not None:
            await self.state.aclose()

    def close(self) -> None:
        for pool in [*self.health.stop(), *(u.pool for u in self.upstreams.values())]:
            pool.close()
        if self.sync is not None:
            self.sync.stop()
        if self.state is not None:
            self.state.close()



_LIVE: Final[weakref.WeakSet[Router]] = weakref.WeakSet()


def live_routers() -> list[Router]:
    """Every router of a provider that is still referenced, for metrics."""
    return list(_LIVE)


def _quietly(send: Callable[[Any], Any], request: Any) -> None:
    # Warm-up is best effort: the first call reports a real failure.
    with contextlib.suppress(RagLLMError):
        send(request)

