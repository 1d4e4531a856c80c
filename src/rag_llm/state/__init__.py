"""State shared by many processes: limits held in a Redis instead of in the process.

:class:`StateBackend` runs the Lua scripts (admission: GCRA rate limits and in-flight
leases in a sorted set, one step for a batch of calls; each endpoint's shared breaker and
health verdicts; the lease that picks the process running an endpoint's health checks)
with redis-py's sync and asyncio clients.
It imports only config, errors, validation and observability; the call layer
(:mod:`rag_llm.calls.shared`) composes it with the local limits that stand in while Redis
is away, and :mod:`rag_llm.calls.sync` shares endpoint state through it.
"""

from __future__ import annotations

from rag_llm.state._admission import Answer, Ask, EndpointLimits, unique_id
from rag_llm.state._backend import DEFAULT_COOLDOWN, SharedVerdicts, StateBackend, live_backends
from rag_llm.state._counts import StateReading, counted_state

__all__ = ["DEFAULT_COOLDOWN", "Answer", "Ask", "EndpointLimits", "SharedVerdicts",
           "StateBackend", "StateReading", "counted_state", "live_backends", "unique_id"]
