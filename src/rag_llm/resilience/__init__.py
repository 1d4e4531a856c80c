"""Resilience policies: retry, retry budget, breaker, balancer, limits and health checks.

Each state machine works on an injected clock (and random source where it draws), holds no
I/O, and is safe to share between threads; ``health`` alone runs probes, on threads of its
own. :mod:`rag_llm.calls` composes them on the provider call path; see
``retry``, ``budget``, ``breaker``, ``balancer``, ``limiter``, ``adaptive`` and ``health``
for each one's defaults and sources.
"""

from __future__ import annotations

from rag_llm.resilience.adaptive import AdaptiveLimit, AdaptivePolicy, AdmissionGate
from rag_llm.resilience.balancer import (
    STRATEGIES,
    Balancer,
    BalancerPolicy,
    Endpoint,
    EndpointSnapshot,
    Lease,
    PeakEwma,
    SmoothWeightedRoundRobin,
    Strategy,
    least_in_flight,
    power_of_two_choices,
    select_candidates,
)
from rag_llm.resilience.breaker import (
    LEGAL_TRANSITIONS,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Permit,
    Transition,
    classify_outcome,
)
from rag_llm.resilience.budget import BudgetPolicy, RetryBudget
from rag_llm.resilience.health import (
    EndpointHealth,
    HealthChecker,
    HealthCheckPolicy,
    connect_probe,
    next_wait,
)
from rag_llm.resilience.limiter import RateLimiter, RateLimiterBackend, RateLimits, TokenBucket
from rag_llm.resilience.retry import (
    RetryDecision,
    RetryPolicy,
    RetryState,
    RetryVerdict,
    is_retryable,
)

__all__ = [
    "LEGAL_TRANSITIONS",
    "STRATEGIES",
    "AdaptiveLimit",
    "AdaptivePolicy",
    "AdmissionGate",
    "Balancer",
    "BalancerPolicy",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "BudgetPolicy",
    "CircuitBreaker",
    "Endpoint",
    "EndpointHealth",
    "EndpointSnapshot",
    "HealthCheckPolicy",
    "HealthChecker",
    "Lease",
    "Outcome",
    "PeakEwma",
    "Permit",
    "RateLimiter",
    "RateLimiterBackend",
    "RateLimits",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "RetryVerdict",
    "SmoothWeightedRoundRobin",
    "Strategy",
    "TokenBucket",
    "Transition",
    "classify_outcome",
    "connect_probe",
    "is_retryable",
    "least_in_flight",
    "next_wait",
    "power_of_two_choices",
    "select_candidates",
]
