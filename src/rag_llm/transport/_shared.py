"""Limits per endpoint, shared by every client of it: each event loop's and the sync one.

A provider holds one async transport per event loop and one sync transport, each with its
own connection pool; ``max_connections`` still bounds what the provider holds to the
endpoint as a whole. Two counts do that, both shared by all of the endpoint's clients:

* :class:`~rag_llm.slots.Slots` counts calls in flight (at most ``max_connections``),
  first come first served across loops and threads, so no client starves the others (a
  client's own waiter may pass the others a few times: it reuses the connection the
  client's ended call left idle, where another client would open one);
* :class:`ConnectionBudget` counts open connections, taken before connecting and given
  back once the connection is closed at both ends (the server closed its side too, see
  ``_linger``), so the server never sees more open than the budget. A client that must
  connect while idle connections of other clients hold the budget asks them to close one
  (each on its own loop).

Calls in flight never exceed the limit, so when every connection is taken at least one of
them is idle or closing: a waiter for a connection always makes progress.

Waiters on threads block on a lock; waiters on event loops await a future, woken with
``call_soon_threadsafe`` when released from elsewhere. An uncontended acquire is a lock
and an integer operation.
"""

from __future__ import annotations

import threading
import time
import weakref
from contextvars import ContextVar
from typing import Final, Protocol

from rag_llm.slots import Slots

__all__ = ["ConnectionBudget", "ConnectionWaitTimeout", "EndpointLimits", "IdleHolder",
           "pool_deadline"]


# When the call now connecting stops waiting for the pool (set once it has waited for a
# slot, so waiting for a connection only gets what is left of pool_timeout).
pool_deadline: Final[ContextVar[float | None]] = ContextVar("rag_llm_pool_deadline",
                                                            default=None)


class IdleHolder(Protocol):
    """A client holding connections of the budget: it can be asked to close an idle one."""

    def release_idle(self) -> None:
        """Close one idle connection soon, if there is one; callable from any thread."""


class ConnectionWaitTimeout(Exception):
    """No connection of the budget came free within ``pool_timeout``.

    Raised inside a transport's connect; the transport reports it as the pool timeout.
    """


class ConnectionBudget:
    """Connections open to one endpoint at once, across all of its clients."""

    def __init__(self, limit: int, pool_timeout: float) -> None:
        self.slots = Slots(limit)
        self.pool_timeout = pool_timeout
        self._holders: weakref.WeakSet[IdleHolder] = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def wanted(self) -> int:
        """How many connects are waiting for a connection to close."""
        return self.slots.waiting

    @property
    def open(self) -> int:
        return self.slots.taken

    def register(self, holder: IdleHolder) -> None:
        with self._lock:
            self._holders.add(holder)

    def unregister(self, holder: IdleHolder) -> None:
        with self._lock:
            self._holders.discard(holder)

    def _ask_holders(self) -> None:
        with self._lock:
            holders = list(self._holders)
        for holder in holders:
            holder.release_idle()

    def _timeout(self) -> float:
        deadline = pool_deadline.get()
        if deadline is None:
            return self.pool_timeout
        return max(deadline - time.monotonic(), 0.0)

    async def take(self) -> None:
        """Count a connection about to be opened, waiting if the budget is spent."""
        if not await self.slots.acquire(self._timeout(), self._ask_holders):
            raise ConnectionWaitTimeout

    def take_sync(self) -> None:
        if not self.slots.acquire_sync(self._timeout(), self._ask_holders):
            raise ConnectionWaitTimeout

    def give_back(self) -> None:
        """A counted connection was closed (or never opened)."""
        self.slots.release()


class EndpointLimits:
    """What all clients of one endpoint share: calls in flight and connections open."""

    __slots__ = ("connections", "pool_timeout", "requests")

    def __init__(self, max_connections: int, pool_timeout: float) -> None:
        self.pool_timeout = pool_timeout
        self.requests = Slots(max_connections)
        self.connections = ConnectionBudget(max_connections, pool_timeout)

    async def admit(self, client: object = None) -> float | None:
        """Take a call slot: None at once, else the pool deadline it waited under.

        ``client`` is the transport the call goes through: a slot it releases goes to its
        own waiters first (see :class:`Slots`). Raises ``TimeoutError`` when no slot came
        within ``pool_timeout``.
        """
        if self.requests.try_acquire():
            return None
        deadline = time.monotonic() + self.pool_timeout
        if not await self.requests.acquire(self.pool_timeout, owner=client):
            raise TimeoutError
        return deadline

    def admit_sync(self, client: object = None) -> float | None:
        if self.requests.try_acquire():
            return None
        deadline = time.monotonic() + self.pool_timeout
        if not self.requests.acquire_sync(self.pool_timeout, owner=client):
            raise TimeoutError
        return deadline
