"""One call's attempts: each one's endpoint, deadline and settling, and the retry between.

A call runs as a series of attempts::

    async for attempt in router.attempts(cost):
        async with attempt:
            return await send(attempt.upstream)

The same loop without ``async`` serves sync calls.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Final

from rag_llm.calls.deadlines import Deadline, watch_deadline
from rag_llm.calls.endpoint import Upstream
from rag_llm.errors import DeadlineExceededError, RequestTimeoutError
from rag_llm.observability.events import get_logger
from rag_llm.resilience.balancer import Lease
from rag_llm.resilience.breaker import Permit
from rag_llm.resilience.retry import RetryDecision, RetryState, RetryVerdict
from rag_llm.state import unique_id
from rag_llm.transport import Request

if TYPE_CHECKING:
    from rag_llm.calls.router import Router
    from rag_llm.calls.shared import Lease as Slot

__all__ = ["Attempt", "Attempts", "outcome_label"]

_log = get_logger("rag_llm.resilience")
# A capped timeout that fires this close to the deadline is the deadline's doing.
_DEADLINE_SLACK: Final = 0.05
_MIN_TIMEOUT: Final = 0.001


def outcome_label(exc: BaseException) -> str:
    if not isinstance(exc, Exception):
        return "cancelled"
    status = getattr(exc, "status", None)
    return str(status) if isinstance(status, int) else type(exc).__name__



class Attempts:
    """One call's attempts: ``async for`` (or ``for``) yields the next :class:`Attempt`.

    A failed attempt that is retried has already slept its backoff when the loop asks for
    the next one; the loop ends by ``return`` from the body or by the error propagating.
    """

    __slots__ = ("_ticket", "cost", "deadline", "last_error", "router", "state", "tried")

    def __init__(self, router: Router, cost: float) -> None:
        self.router = router
        self.cost = cost
        deadline = router.config.deadline
        self.deadline = None if deadline is None else time.monotonic() + deadline
        self.state = RetryState(router.policy)
        self.tried: list[str] = []
        self.last_error: BaseException | None = None
        self._ticket = ""

    def ticket(self) -> str:
        """This call's identity at a shared rate limit: one caller refused there holds its
        place until it is admitted, so large calls are not starved by small ones."""
        if not self._ticket:
            self._ticket = unique_id()
        return self._ticket

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __aiter__(self) -> Attempts:
        return self

    # An endpoint's shared limit refusing the call sends it to the next endpoint in the
    # same round; only when all have refused does it wait, for the soonest.
    async def __anext__(self) -> Attempt:
        refused: dict[str, tuple[str, float]] = {}
        while True:
            chosen = self.router._choose(self, refused)
            if isinstance(chosen, Attempt):
                shared = await self.router._aadmit_shared(chosen,
                                                          self.router._last_choice(refused))
                if shared is None:
                    return chosen
                refused.update(shared)
                continue
            await asyncio.sleep(self.router._refusal_wait(self, chosen))
            refused = {}

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> Attempt:
        refused: dict[str, tuple[str, float]] = {}
        while True:
            chosen = self.router._choose(self, refused)
            if isinstance(chosen, Attempt):
                shared = self.router._admit_shared(chosen, self.router._last_choice(refused))
                if shared is None:
                    return chosen
                refused.update(shared)
                continue
            time.sleep(self.router._refusal_wait(self, chosen))
            refused = {}

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
                  delay=round(decision.delay, 3), error=outcome_label(exc))
        self.state = self.state.increment()
        return decision


class Attempt:
    """One try of a call on ``upstream``: ``async with`` (or ``with``) it around the send.

    On the way out it settles the breaker and balancer, and when the call may be retried it
    sleeps the backoff and swallows the error so the caller's loop makes the next attempt.
    The async form also enforces the call's deadline.
    """

    __slots__ = ("_deadline", "call", "lease", "permit", "slot", "started", "upstream")

    def __init__(self, call: Attempts, upstream: Upstream, lease: Lease | None,
                 permit: Permit | None) -> None:
        self.call = call
        self.upstream = upstream
        self.lease = lease
        self.permit = permit
        # A slot of global_max_in_flight taken with the shared rate limits, until sent.
        self.slot: Slot | None = None
        self.started = time.monotonic()
        self._deadline: Deadline | None = None

    def take_slot(self) -> Slot | None:
        """The slot taken at admission, now the sender's to release."""
        slot, self.slot = self.slot, None
        return slot

    def release_slot(self) -> None:
        slot = self.take_slot()
        if slot is not None and self.upstream.in_flight is not None:
            self.upstream.in_flight.release(slot)

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
        """``request`` with its timeouts capped by the time left, for sync calls: a thread
        cannot be interrupted, so the deadline has to reach the socket. An async attempt's
        deadline timer cancels it instead, and its request is left as it is."""
        remaining = self.call.remaining()
        if self._deadline is not None or remaining is None or \
                remaining >= self.call.router.config.timeouts.read:
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

