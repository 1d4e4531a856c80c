"""A router's active health checks: their probes and pools, and the view the balancer reads.

Nothing here refers back to the router or the provider, so a provider dropped unclosed is
collected at once; its checks then stop, and their last thread closes the probes' pools.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from rag_llm.calls.endpoint import Upstream
from rag_llm.config import PoolLimits, ProviderConfig, Timeouts
from rag_llm.observability.events import get_logger
from rag_llm.pool import PROBE, ClientPool, PoolState
from rag_llm.resilience.balancer import Endpoint
from rag_llm.resilience.health import HealthChecker, connect_probe
from rag_llm.transport import TransportSettings, get_backend
from rag_llm.transport._tls import ssl_context

if TYPE_CHECKING:
    from rag_llm.calls.sync import EndpointSync
    from rag_llm.resilience.health import HealthCheckPolicy

__all__ = ["HealthChecks", "HealthView"]

_log = get_logger("rag_llm.resilience")


class HealthView:
    """Whether the balancer may count an endpoint healthy: breaker and active check agree,
    and, with shared state, no other process has it open or unhealthy."""

    __slots__ = ("checker", "shared", "upstreams")

    def __init__(self, upstreams: Mapping[str, Upstream],
                 shared: EndpointSync | None = None) -> None:
        self.upstreams = upstreams
        self.shared = shared
        self.checker: HealthChecker | None = None

    def __call__(self, endpoint: Endpoint) -> bool:
        breaker = self.upstreams[endpoint.name].breaker
        if breaker is not None and not breaker.available:
            return False
        return self.checked(endpoint.name)

    def checked(self, name: str) -> bool:
        """The endpoint's health apart from its own breaker: the active check's verdict,
        that of the process running it when shared, and no breaker open elsewhere."""
        shared = self.shared
        checker = self.checker
        if shared is not None:
            verdict = shared.verdict(name)
            if verdict is False:
                return False
            if verdict is True and not shared.holds(name):
                return True
        return checker is None or checker.healthy(name)



class HealthChecks:
    """The active checks of one provider's endpoints, started on its first call."""

    def __init__(self, config: ProviderConfig, upstreams: Mapping[str, Upstream],
                 shared: EndpointSync | None = None) -> None:
        self.config = config
        self.provider = config.name
        self.upstreams = upstreams
        self.shared = shared
        self.view = HealthView(upstreams, shared)
        # The checks' own pools, by endpoint name (health_check with a path).
        self._pools: dict[str, ClientPool] = {}
        self._lock = threading.Lock()
        self.closed = False

    def start(self) -> None:
        """Start the checks, if configured; idempotent, cheap when running."""
        policy = self.config.health_check
        if policy is None or self.view.checker is not None or self.closed:
            return
        with self._lock:
            if self.view.checker is not None or self.closed:
                return
            pools: dict[str, ClientPool] = {}
            probes = {name: self._probe(upstream, policy, pools)
                      for name, upstream in self.upstreams.items()}
            # The checker's threads hold neither the router nor the provider, and close
            # the probes' pools as they end, however the checks were stopped.
            gate = on_checked = None
            if self.shared is not None:
                # One process at a time checks each endpoint; the others read its verdicts.
                lease = _lease_ttl(policy)
                gate = _Gate(self.shared, self.view, lease)
                on_checked = functools.partial(_share, self.shared, 2 * lease)
            checker = HealthChecker(probes, policy, name=self.provider,
                                    on_change=functools.partial(_health_changed, self.provider),
                                    on_stop=functools.partial(_close_pools, pools.values()),
                                    gate=gate, on_checked=on_checked)
            checker.start()
            self._pools = pools
            self.view.checker = checker

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

    def pools(self) -> list[ClientPool]:
        """The probes' own pools."""
        with self._lock:
            return list(self._pools.values())

    def release_when_collected(self) -> Callable[[], bool]:
        """For the owner's finalizer: stops the checks without waiting (their last thread
        closes their pools) and says whether anything was left open.

        It refers to the view, never to the router, so it cannot keep it alive.
        """
        return functools.partial(_abandon, self.view)

    def stop(self) -> list[ClientPool]:
        """Stop the checks for good; the probes' pools, for the caller to close."""
        with self._lock:
            self.closed = True
            checker, self.view.checker = self.view.checker, None
            pools = list(self._pools.values())
        if checker is not None:
            checker.stop()
        return pools


def _abandon(view: HealthView) -> bool:
    """Stop ``view``'s checks without joining; True if they ran or a pool was opened."""
    checker, view.checker = view.checker, None
    if view.shared is not None:
        view.shared.abandon()
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



def _lease_ttl(policy: HealthCheckPolicy) -> float:
    """A health lease outlives the holder's longest gap between renewals twice over."""
    return 2 * (policy.interval * (1 + policy.jitter) + policy.timeout)


class _Gate:
    """Asked before each check: whether this process holds the endpoint's health lease.

    A process that takes the lease over starts from the verdict its predecessor shared.
    It refers to the view, never to the router or the checks.
    """

    __slots__ = ("lease", "shared", "view")

    def __init__(self, shared: EndpointSync, view: HealthView, lease: float) -> None:
        self.shared = shared
        self.view = view
        self.lease = lease

    def __call__(self, name: str) -> bool:
        held_before = self.shared.holds(name)
        verdict = self.shared.shared_health(name)
        if not self.shared.may_check(name, self.lease):
            return False
        checker = self.view.checker
        if not held_before and verdict is not None and checker is not None:
            checker.assume(name, verdict)
        return True


def _share(shared: EndpointSync, ttl: float, name: str, healthy: bool) -> None:
    shared.share_health(name, healthy, ttl)


def _health_changed(provider: str, endpoint: str, healthy: bool) -> None:
    log = _log.info if healthy else _log.warning
    log("endpoint_health_changed", provider=provider, endpoint=endpoint, healthy=healthy)

