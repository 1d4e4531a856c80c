"""One endpoint of a provider: its adapter, pool, breaker, rate limiters and gates."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from rag_llm.adapters import AdapterFactory, APIAdapter
from rag_llm.calls.admission import EndpointAdmission
from rag_llm.calls.shared import InFlightLimit, SharedRateLimiter, rate_spec
from rag_llm.calls.sync import EndpointSync
from rag_llm.config import EndpointConfig, ProviderConfig
from rag_llm.observability.events import get_logger
from rag_llm.pool import ClientPool
from rag_llm.resilience.adaptive import AdaptivePolicy
from rag_llm.resilience.balancer import Endpoint
from rag_llm.resilience.breaker import BreakerState, CircuitBreaker, Transition
from rag_llm.resilience.limiter import RateLimiter, RateLimiterBackend
from rag_llm.state import StateBackend
from rag_llm.transport import TransportSettings, get_backend

__all__ = ["Upstream", "build_upstream"]

_log = get_logger("rag_llm.resilience")


class Upstream:
    """One endpoint of a provider: its API adapter, pool, breaker and rate limiter."""

    __slots__ = ("admission", "api", "breaker", "config", "endpoint", "in_flight", "limiter",
                 "name", "pool", "shared")

    def __init__(self, config: EndpointConfig, api: APIAdapter, pool: ClientPool,
                 breaker: CircuitBreaker | None,
                 admission: EndpointAdmission | None = None, *,
                 shared: SharedRateLimiter | None = None,
                 in_flight: InFlightLimit | None = None) -> None:
        self.config = config
        self.name = config.name
        self.api = api
        self.pool = pool
        self.breaker = breaker
        # The adaptive concurrency gate (adaptive_concurrency), else None.
        self.admission = admission
        # The rate limits in Redis (with state), which the router awaits in async calls;
        # else the local limiter, behind the backend protocol.
        self.shared = shared
        self.limiter: RateLimiterBackend | None = (
            RateLimiter(config.rate_limits) if config.rate_limits and shared is None else None)
        # global_max_in_flight, in Redis or in this process, else None.
        self.in_flight = in_flight
        self.endpoint = Endpoint(config.name, weight=config.weight, priority=config.priority)

    def __repr__(self) -> str:
        return f"<Upstream {self.name!r} pool={self.pool.state.value}>"



def build_upstream(config: ProviderConfig, endpoint: EndpointConfig, api_class: AdapterFactory,
                   settings: TransportSettings, state: StateBackend | None = None,
                   sync: EndpointSync | None = None) -> Upstream:
    """One endpoint's adapter, pool, breaker and gate, as the provider's config says."""
    own = replace(config, base_url=endpoint.base_url, api_key=endpoint.api_key,
                  api_version=endpoint.api_version, deployment=endpoint.deployment,
                  endpoints=(endpoint,))
    breaker = None if config.circuit_breaker is None else CircuitBreaker(
        config.circuit_breaker,
        on_transition=functools.partial(_breaker_changed, config.name, endpoint.name, sync))
    pool = ClientPool(settings, get_backend(config.transport, http2=config.http2),
                      endpoint=endpoint.name)
    admission = None
    if config.adaptive_concurrency:
        admission = EndpointAdmission(pool, AdaptivePolicy(
            max_limit=config.limits.max_connections,
            initial_limit=max(config.limits.max_keepalive_connections, 1)))
    fail = config.on_state_error == "fail"
    limits = None if state is None else state.endpoint_limits(
        endpoint.name, rate_spec(endpoint.rate_limits), config.global_max_in_flight or 0)
    in_flight = None
    if config.global_max_in_flight is not None:
        in_flight = InFlightLimit(config.global_max_in_flight, settings, backend=state,
                                  limits=limits, fail=fail, instances=config.expected_instances)
    shared = None
    if state is not None and limits is not None and endpoint.rate_limits is not None:
        shared = SharedRateLimiter(state, limits, endpoint.rate_limits, fail=fail,
                                   instances=config.expected_instances, in_flight=in_flight)
    return Upstream(endpoint, api_class(own), pool, breaker, admission, shared=shared,
                    in_flight=in_flight)



def _breaker_changed(provider: str, endpoint: str, sync: EndpointSync | None,
                     transition: Transition) -> None:
    if sync is not None:
        sync.breaker_changed(endpoint, transition)  # queued: written off the call path
    fields: dict[str, Any] = {}
    if transition.open_until is not None:
        fields["open_for"] = round(transition.open_until - transition.at, 3)
    log = _log.warning if transition.new is BreakerState.OPEN else _log.info
    log("circuit_breaker_state_changed", provider=provider, endpoint=endpoint,
        old=transition.old.value, new=transition.new.value, **fields)

