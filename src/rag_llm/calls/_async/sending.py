"""Sending one call through its router: attempts, admission, the pool, and streams.

The async code is the source: the sync twin of this module is generated from it by
``scripts/unasync.py`` (``--check`` in CI fails when the two disagree), so both kinds of
call take the same steps in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeVar

from rag_llm.calls._async.leases import leased
from rag_llm.calls.streams import OpenStream
from rag_llm.calls.timers import AsyncTimer
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


async def send(router: Router, call: CallRecord, build: Callable[[APIAdapter], Request],
               parse: Callable[[APIAdapter, Request, Response], T], cost: float) -> T:
    """``parse`` of the answer to ``build``'s request, retried as the router decides."""
    async for attempt in router.attempts(cost):
        async with attempt:
            upstream = attempt.upstream
            transport = await upstream.pool.async_transport()  # before the deadline's cap
            request = attempt.capped(build(upstream.api))
            if upstream.in_flight is None and upstream.admission is None:
                # No gate to pass: the common case skips the exit stack's cost.
                response = await transport.send(request)
                call.status = response.status
                return parse(upstream.api, request, response)
            async with contextlib.AsyncExitStack() as gates:
                admission = await _gates(attempt, request, gates)
                response = await transport.send(request)
                call.status = response.status
                if admission is not None:
                    admission.status = response.status
            return parse(upstream.api, request, response)
    raise AssertionError("attempts end by return or raise")


async def _gates(attempt: Attempt, request: Request,
                 stack: contextlib.AsyncExitStack) -> Admission | None:
    """Pass the endpoint's gates into ``stack``: a lease of ``global_max_in_flight``, then
    the adaptive limit, whose admission (if any) hears the answer's status."""
    upstream = attempt.upstream
    if upstream.in_flight is not None:
        slot = leased(upstream.in_flight, request, attempt.call.remaining(), attempt.take_slot())
        await stack.enter_async_context(slot)
    if upstream.admission is None:
        return None
    return await stack.enter_async_context(upstream.admission.admitted(request))


async def stream(router: Router, call: CallRecord, build: Callable[[APIAdapter], Request],
                 parser: Callable[[APIAdapter, Request], StreamParser[T]],
                 cost: float, timeouts: Timeouts) -> AsyncIterator[T]:
    """The items ``parser`` reads from ``build``'s streamed request (text deltas, or whole
    chunks), retried only until the first one."""
    async with contextlib.AsyncExitStack() as held:
        async for attempt in router.attempts(cost):
            async with attempt:
                opened = await _open(attempt, build, parser, call, held, timeouts)
                break
        delivered = 0
        item = opened.first
        while True:
            if item is not None:
                delivered += 1
                call.token()
                yield item
            idle = AsyncTimer(timeouts.stream_idle)
            try:
                async with idle:
                    line = await anext(opened.lines)
            except StopAsyncIteration:
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


async def _open(attempt: Attempt, build: Callable[[APIAdapter], Request],
                parser: Callable[[APIAdapter, Request], StreamParser[T]], call: CallRecord,
                held: contextlib.AsyncExitStack,
                timeouts: Timeouts) -> OpenStream[AsyncIterator[str], T]:
    """Send, then read up to the first token within ``first_token_timeout``.

    Up to there a failure is the attempt's, and may be retried; the open response then
    moves to ``held``, which the stream's reader owns.
    """
    api = attempt.upstream.api
    transport = await attempt.upstream.pool.async_transport()  # before the deadline's cap
    request = attempt.capped(build(api))
    first_token = AsyncTimer(timeouts.first_token)
    async with contextlib.AsyncExitStack() as stack:
        admission = await _gates(attempt, request, stack)
        try:
            async with first_token:
                response = await stack.enter_async_context(transport.stream(request))
                call.status = response.status
                if admission is not None:
                    admission.status = response.status
                if response.status >= 400:
                    content = await response.aread()
                    call.response = Response(response.status, response.headers, content)
                    raise api.error(request, response.status, response.headers, content)
                call.response = Response(response.status, response.headers, b"")
                opened = OpenStream(api, request, response.aiter_lines(), parser(api, request),
                                    response.headers.get("content-type", ""))
                async for line in opened.lines:
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
        held.push_async_exit(stack.pop_all())
    return opened
