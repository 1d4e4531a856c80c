"""Admission to one endpoint's shared limits: what a call asks, what Redis answers, and the
batching that makes it one round trip however many calls ask at once.

Every call that asks an endpoint's rate limits or ``global_max_in_flight`` for admission
goes through the ``ADMIT`` script. Async calls of one event loop share a
:class:`AdmitBatcher` per endpoint: while one trip is in flight, the calls that arrive wait
for the next, which carries all of them in one EVALSHA. A trip also carries the releases of
leases this process has finished with, so a call's lease costs no round trip of its own.
The trip runs in its own task: a caller that gives up (its deadline, a cancel) never cancels
a command half-way through redis-py, and a lease the trip took for it is given back. A trip
that fails fails the calls queued behind it too, so that no call waits out two timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from rag_llm.errors import StateUnavailableError

__all__ = ["MAX_BATCH", "AdmitBatcher", "Answer", "Ask", "EndpointLimits", "answers_of",
           "unique_id"]

# Calls (and, separately, releases) carried by one trip: bounds the script's run on the
# server, which blocks every other client of that Redis while it runs.
MAX_BATCH: Final = 128


def _prefix() -> str:
    return f"{os.getpid():x}.{secrets.token_hex(4)}."


# Lease members and tickets: unique across processes (pid and a random part, new in a forked
# child) and within one (a counter), at a fraction of a random token's cost per call.
_ids = {"prefix": _prefix()}
_counter = itertools.count()
os.register_at_fork(after_in_child=lambda: _ids.update(prefix=_prefix()))


def unique_id() -> str:
    return f"{_ids['prefix']}{next(_counter):x}"


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    """One endpoint's shared limits as the ``ADMIT`` script takes them."""

    # The requests bucket, the tokens bucket and the sorted set of leases: one hash slot.
    keys: tuple[str, str, str]
    # The script's first seven arguments: both limits' interval and tolerance, the hold
    # grace, the lease cap and the lease ttl (ms).
    args: tuple[str, ...]

    @property
    def leases(self) -> str:
        return self.keys[2]


@dataclass(frozen=True, slots=True)
class Ask:
    """One call's request: charge the rate limits (``rated``, ``cost`` tokens, as
    ``ticket``) and take a lease named ``member`` ('' for none). Refused by the tokens
    limit, it holds its place there only with ``hold`` (no other endpoint left to try)."""

    ticket: str
    cost: float
    rated: bool
    member: str
    hold: bool = True


@dataclass(frozen=True, slots=True)
class Answer:
    """``wait``: None when admitted, else the seconds until the rate limits would admit the
    call (nothing was charged). ``leased``: the lease asked for was taken."""

    wait: float | None
    leased: bool


def answers_of(reply: Any) -> list[Answer]:
    """The script's flat reply, two strings per call, as answers."""
    items = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    return [Answer(None, second == "1") if first == "1" else Answer(max(float(second), 0.0),
                                                                    False)
            for first, second in zip(items[::2], items[1::2], strict=True)]


class AdmitBatcher:
    """The asks of one event loop for one endpoint: one trip in flight, the rest batched."""

    def __init__(self, trip: Callable[[list[Ask]], Awaitable[list[Answer]]],
                 give_back: Callable[[str], None]) -> None:
        self._trip = trip
        self._give_back = give_back
        self._waiting: list[tuple[Ask, asyncio.Future[Answer]]] = []
        self._task: asyncio.Task[None] | None = None

    async def ask(self, ask: Ask) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((ask, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                try:
                    answers = await self._trip([ask for ask, _ in batch])
                except Exception as exc:
                    # The calls that queued behind the failed trip would wait out another
                    # timeout: they fail with it, at once, and their policy decides.
                    batch += self._waiting
                    self._waiting = []
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(_own(exc))
                    continue
                except BaseException:  # the trip was cancelled: so are its callers
                    for _, future in batch:
                        future.cancel()
                    raise
                for (ask, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
                    elif answer.leased:  # its caller gave up: nobody will use this lease
                        self._give_back(ask.member)
        finally:
            self._task = None


def _own(exc: Exception) -> Exception:
    """Each caller raises an error of its own (one object raised in many tasks would
    gather all their tracebacks)."""
    if isinstance(exc, StateUnavailableError):
        return StateUnavailableError(exc.url, exc.detail, provider=exc.provider)
    return exc
