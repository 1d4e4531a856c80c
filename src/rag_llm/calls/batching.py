"""Embedding micro-batching: concurrent ``aembed`` calls share batched upstream requests.

Calls queued within ``window`` seconds of the first (``0``: within the same event-loop
turn) are packed, in arrival order, into requests of at most ``max_inputs`` texts and, when
set, ``max_tokens`` estimated tokens, sent concurrently over the pool. Each caller gets
exactly its own vectors back, in order; a failed request fails only the callers that had
texts in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

__all__ = ["EmbeddingBatcher", "batch_bounds", "estimate_tokens", "split", "text_tokens"]

Vectors = list[list[float]]
SendBatch = Callable[[list[str]], Awaitable[Vectors]]
_UNSET: Final[list[float]] = []


def text_tokens(text: str) -> float:
    """A token estimate for one text: about four characters a token."""
    return len(text) / 4


def batch_bounds(texts: Sequence[str], size: int,
                 max_tokens: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive batches of at most ``size`` texts and ``max_tokens``.

    A text above ``max_tokens`` on its own still goes, alone: the upstream's error for it
    is clearer than one made up here.

    >>> batch_bounds(["a" * 40, "b" * 40, "c"], size=10, max_tokens=15)
    [(0, 1), (1, 3)]
    """
    if max_tokens is None:
        return [(i, min(i + size, len(texts))) for i in range(0, len(texts), size)]
    bounds: list[tuple[int, int]] = []
    start, tokens = 0, 0.0
    for i, text in enumerate(texts):
        cost = text_tokens(text)
        if i > start and (i - start >= size or tokens + cost > max_tokens):
            bounds.append((start, i))
            start, tokens = i, 0.0
        tokens += cost
    if start < len(texts):
        bounds.append((start, len(texts)))
    return bounds


def split(items: Sequence[str], size: int, max_tokens: int | None = None) -> list[list[str]]:
    """``items`` in consecutive batches of at most ``size`` texts and ``max_tokens``."""
    return [list(items[a:b]) for a, b in batch_bounds(items, size, max_tokens)]


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

    def __init__(self, send: SendBatch, *, max_inputs: int, window: float,
                 max_tokens: int | None = None) -> None:
        self._send = send
        self._max_inputs = max_inputs
        self._max_tokens = max_tokens
        self._queued_tokens = 0.0
        self._window = window
        self._loop = asyncio.get_running_loop()
        self._queued: list[tuple[_Caller, int, str]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        caller = _Caller(self._loop.create_future(), len(texts))
        self._queued.extend((caller, i, text) for i, text in enumerate(texts))
        if self._max_tokens is not None:
            self._queued_tokens += sum(text_tokens(text) for text in texts)
        if len(self._queued) >= self._max_inputs or (
                self._max_tokens is not None and self._queued_tokens >= self._max_tokens):
            # Full requests go now; the last, partly filled one waits for the window.
            bounds = self._bounds(self._queued)
            end = bounds[-1][1] if bounds[-1][1] - bounds[-1][0] >= self._max_inputs \
                else bounds[-1][0]
            self._start(self._queued[:end])
            self._queued = self._queued[end:]
            self._queued_tokens = sum(text_tokens(text) for _, _, text in self._queued) \
                if self._max_tokens is not None else 0.0
        if self._queued and self._flush_handle is None:
            self._flush_handle = (self._loop.call_soon(self._flush) if self._window == 0
                                  else self._loop.call_later(self._window, self._flush))
        return await caller.future

    def _flush(self) -> None:
        self._flush_handle = None
        queued, self._queued = self._queued, []
        self._queued_tokens = 0.0
        self._start(queued)

    def _bounds(self, queued: list[tuple[_Caller, int, str]]) -> list[tuple[int, int]]:
        return batch_bounds([text for _, _, text in queued], self._max_inputs, self._max_tokens)

    def _start(self, queued: list[tuple[_Caller, int, str]]) -> None:
        if not queued:
            return
        for start, end in self._bounds(queued):
            task = self._loop.create_task(self._request(queued[start:end]))
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


def estimate_tokens(texts: Sequence[str], extra: int = 0) -> float:
    """A rate-limit token estimate: about four characters a token, plus ``extra``."""
    return sum(text_tokens(text) for text in texts) + extra
