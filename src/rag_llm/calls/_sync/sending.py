# Generated from rag_llm/calls/_async/sending.py by scripts/unasync.py:
# edit that file, then run the script.
"""Sending one call through its router: attempts, admission, the pool, and streams.

The async code is the source: the sync twin of this module is generated from it by
``scripts/unasync.py`` (``--check`` in CI fails when the two disagree), so both kinds of
call take the same steps in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from rag_llm.calls._sync.leases import leased
from rag_llm.calls.streams import OpenStream
from rag_llm.calls.timers import Timer
from rag_llm.errors import ReadTimeoutError, TransportError
from rag_llm.transport import Response

if TYPE_CHECKING:
    from rag_llm.adapters import APIAdapter, StreamParser
    from rag_llm.calls.admission import Admission
    from rag_llm.calls.attempts import Attempt
    from rag_llm.calls.record import CallRecord
    from rag_llm.calls.router import Router
    from rag_llm.config import Timeouts
    from rag_llm.transport import Request

__all__ = ["send", "stream"]

T = TypeVar("T")


def send(router: Router, call: CallRecord, build: Callable[[APIAdapter], Request],
         parse: Callable[[APIAdapter, Request, Response], T], cost: float) -> T:
    """``parse`` of the answer to ``build``'s request, retried as the router decides."""
    for attempt in router.attempts(cost):
        with attempt:
            upstream = attempt.upstream
            transport = upstream.pool.sync_transport()  # before the deadline's cap
            request = attempt.capped(build(upstream.api))
            if upstream.in_flight is None and upstream.admission is None:
                # No gate to pass: the common case skips the exit stack's cost.
                response = transport.send(request)
                call.status = response.status
                return parse(upstream.api, request, response)
            with contextlib.ExitStack() as gates:
                admission = _gates(attempt, request, gates)
                response = transport.send(request)
                call.status = response.status
                if admission is not None:
                    admission.status = response.status
            return parse(upstream.api, request, response)
    raise AssertionError("attempts end by return or raise")


def _gates(attempt: Attempt, request: Request,
           stack: contextlib.ExitStack) -> Admission | None:
    """Pass the endpoint's gates into ``stack``: a lease of ``global_max_in_flight``, then
    the adaptive limit, whose admission (if any) hears the answer's status."""
    upstream = attempt.upstream
    if upstream.in_flight is not None:
        slot = leased(upstream.in_flight, request, attempt.call.remaining(), attempt.take_slot())
        stack.enter_context(slot)
    if upstream.admission is None:
        return None
    return stack.enter_context(upstream.admission.admitted_sync(request))


def stream(router: Router, call: CallRecord, build: Callable[[APIAdapter], Request],
           parser: Callable[[APIAdapter, Request], StreamParser[T]],
           cost: float, timeouts: Timeouts) -> Iterator[T]:
    """The items ``parser`` reads from ``build``'s streamed request (text deltas, or whole
    chunks), retried only until the first one."""
    with contextlib.ExitStack() as held:
        for attempt in router.attempts(cost):
            with attempt:
                opened = _open(attempt, build, parser, call, held, timeouts)
                break
        delivered = 0
        item = opened.first
        while True:
            if item is not None:
                delivered += 1
                call.token()
                yield item
            idle = Timer(timeouts.stream_idle)
            try:
                with idle:
                    line = next(opened.lines)
            except StopIteration:
                break
            except TransportError as exc:  # read timeouts included
                raise opened.interrupted(delivered, exc.detail) from exc
            except TimeoutError:
                if not idle.expired():
                    raise
                raise opened.interrupted(
                    delivered, f"no token for stream_idle_timeout="
                              f"{timeouts.stream_idle:g}s") from None
            item = opened.parser.feed(line)
        if not opened.parser.done:
            raise opened.interrupted(delivered, "the stream ended before [DONE]")


def _open(attempt: Attempt, build: Callable[[APIAdapter], Request],
          parser: Callable[[APIAdapter, Request], StreamParser[T]], call: CallRecord,
          held: contextlib.ExitStack,
          timeouts: Timeouts) -> OpenStream[Iterator[str], T]:
    """Send, then read up to the first token within ``first_token_timeout``.

    Up to there a failure is the attempt's, and may be retried; the open response then
    moves to ``held``, which the stream's reader owns.
    """
    api = attempt.upstream.api
    transport = attempt.upstream.pool.sync_transport()  # before the deadline's cap
    request = attempt.capped(build(api))
    first_token = Timer(timeouts.first_token)
    with contextlib.ExitStack() as stack:
        admission = _gates(attempt, request, stack)
        try:
            with first_token:
                response = stack.enter_context(transport.stream(request))
                call.status = response.status
                if admission is not None:
                    admission.status = response.status
                if response.status >= 400:
                    content = response.read()
                    call.response = Response(response.status, response.headers, content)
                    raise api.error(request, response.status, response.headers, content)
                call.response = Response(response.status, response.headers, b"")
                opened = OpenStream(api, request, response.iter_lines(), parser(api, request),
                                   response.headers.get("content-type", ""))
                for line in opened.lines:
                    opened.first = opened.parser.feed(line)
                    if opened.first is not None or opened.parser.done:
                        break
        except TimeoutError:
            if not first_token.expired():
                raise
            raise ReadTimeoutError(
                f"no token within first_token_timeout={timeouts.first_token:g}s",
                provider=api.provider, endpoint=request.endpoint) from None
        opened.check_started()
        held.push(stack.pop_all())
    return opened
