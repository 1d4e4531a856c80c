"""Embedding micro-batching: concurrent ``aembed`` calls share batched upstream requests.

Calls queued within ``window`` seconds of the first (``0``: within the same event-loop
turn) are packed, in arrival order, into requests of at most ``max_inputs`` texts, sent
concurrently over the pool. Each caller gets exactly its own vectors back, in order; a
failed request fails only the callers that had texts in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

__all__ = ["EmbeddingBatcher", "split"]

Vectors = list[list[float]]
SendBatch = Callable[[list[str]], Awaitable[Vectors]]
_UNSET: Final[list[float]] = []


def split(items: Sequence[str], size: int) -> list[list[str]]:
    """``items`` in consecutive batches of at most ``size``."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class _Caller:
    """One ``embed`` call waiting for its vectors, which may come from several requests."""

    __slots__ = ("future", "missing", "vectors")

    def __init__(self, future: asyncio.Future[Vectors], count: int) -> None:
        self.future = future
        self.vectors: Vectors = [_UNSET] * count
        self.missing = count

    def fill(self, position: int, vector: list[float]) -> None:
        self.vectors[position] = vector
        self.missing -= 1
        if self.missing == 0 and not self.future.done():
            self.future.set_result(self.vectors)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class EmbeddingBatcher:
    """Coalesces the ``embed`` calls of one event loop; create it inside that loop."""

    def __init__(self, send: SendBatch, *, max_inputs: int, window: float) -> None:
        self._send = send
        self._max_inputs = max_inputs
        self._window = window
        self._loop = asyncio.get_running_loop()
        self._queued: list[tuple[_Caller, int, str]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        caller = _Caller(self._loop.create_future(), len(texts))
        self._queued.extend((caller, i, text) for i, text in enumerate(texts))
        if len(self._queued) >= self._max_inputs:
            # Full requests go now; the rest waits for the window to fill it further.
            full = len(self._queued) // self._max_inputs * self._max_inputs
            self._start(self._queued[:full])
            self._queued = self._queued[full:]
        if self._queued and self._flush_handle is None:
            self._flush_handle = (self._loop.call_soon(self._flush) if self._window == 0
                                  else self._loop.call_later(self._window, self._flush))
        return await caller.future

    def _flush(self) -> None:
        self._flush_handle = None
        queued, self._queued = self._queued, []
        self._start(queued)

    def _start(self, queued: list[tuple[_Caller, int, str]]) -> None:
        for start in range(0, len(queued), self._max_inputs):
            task = self._loop.create_task(self._request(queued[start:start + self._max_inputs]))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)

    async def _request(self, batch: list[tuple[_Caller, int, str]]) -> None:
        live = [(caller, i, text) for caller, i, text in batch if not caller.future.done()]
        if not live:
            return  # every caller in it was cancelled or has failed already
        try:
            vectors = await self._send([text for _, _, text in live])
        except asyncio.CancelledError:
            for caller, _, _ in live:
                caller.future.cancel()
            raise
        except Exception as exc:
            for caller, _, _ in live:
                caller.fail(exc)
            return
        for (caller, position, _), vector in zip(live, vectors, strict=True):
            caller.fill(position, vector)
