"""The call layer: where each attempt goes, whether it is retried, and how it is sent.

It knows no wire format: requests are built and responses parsed by an
:class:`~rag_llm.adapters.APIAdapter`. It composes the state machines of
:mod:`rag_llm.resilience` (balancer, breakers, retry budget, limiter, health checks) with the
pools of :mod:`rag_llm.pool`, under one deadline per call.
"""

from __future__ import annotations

__all__: list[str] = []
