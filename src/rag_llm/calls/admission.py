"""Adaptive admission per endpoint: one AIMD limit and one count of calls in flight.

With ``adaptive_concurrency`` each endpoint's calls pass a gate whose limit follows the
upstream (:mod:`rag_llm.resilience.adaptive`): a 429, a 503 or a timeout marks a call
dropped and the limit backs off; successes under load grow it back. Async calls of every
event loop and sync calls of every thread pass the same
:class:`~rag_llm.resilience.adaptive.AdmissionGate`, so the limit bounds them together.
Waiting at the gate counts against ``pool_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Final

from rag_llm.errors import ConnectTimeoutError, ReadTimeoutError
from rag_llm.pool import ClientPool
from rag_llm.resilience.adaptive import AdaptiveLimit, AdaptivePolicy, AdmissionGate
from rag_llm.transport import Request, pool_timeout_error

__all__ = ["Admission", "EndpointAdmission"]

# Answers that mean the upstream is over capacity: the limit backs off.
_DROPPED_STATUSES: Final = frozenset({429, 503})
_DROPPED_ERRORS: Final = (ReadTimeoutError, ConnectTimeoutError)


class Admission:
    """One admitted call: set ``status`` to the upstream's answer before it is released."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


class EndpointAdmission:
    """The adaptive limit of one endpoint and the gate in front of its pool."""

    def __init__(self, pool: ClientPool, policy: AdaptivePolicy) -> None:
        self.limit = AdaptiveLimit(policy)
        self._pool = pool
        self.gate = AdmissionGate(self.limit)

    @asynccontextmanager
    async def admitted(self, request: Request) -> AsyncIterator[Admission]:
        """Hold a slot for one async call, and report how it went."""
        try:
            async with asyncio.timeout(self._pool.settings.timeouts.pool):
                started = await self.gate.acquire()
        except TimeoutError:
            raise pool_timeout_error(self._pool.settings, request) from None
        with self._reported(started, "async") as admission:
            yield admission

    @contextmanager
    def admitted_sync(self, request: Request) -> Iterator[Admission]:
        """Hold a slot for one sync call, and report how it went."""
        started = self.gate.acquire_sync(self._pool.settings.timeouts.pool)
        if started is None:
            raise pool_timeout_error(self._pool.settings, request)
        with self._reported(started, "sync") as admission:
            yield admission

    @contextmanager
    def _reported(self, started: float, client: str) -> Iterator[Admission]:
        """Release the gate's slot when the call ends, saying whether it was dropped."""
        admission = Admission()
        dropped = False
        try:
            yield admission
        except _DROPPED_ERRORS:
            dropped = True
            raise
        finally:
            self.gate.release(dropped=dropped or admission.status in _DROPPED_STATUSES,
                         started=started)
            self._pool.stats(client).concurrency_limit = self.limit.limit
