"""Resilience policies as pure state machines: retry, retry budget, breaker, balancer, limits.

Each works on an injected clock (and random source where it draws), holds no I/O, and is
safe to share between threads. The provider call path composes them; see ``retry``,
``budget``, ``breaker``, ``balancer``, ``limiter`` and ``adaptive`` for each one's defaults
and sources.
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
    "EndpointSnapshot",
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
    "is_retryable",
    "least_in_flight",
    "power_of_two_choices",
    "select_candidates",
]
