"""A chat stream that has answered, as async and sync readers share it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from rag_llm.adapters import APIAdapter, StreamParser
from rag_llm.errors import ConnectionLostError, StreamInterruptedError
from rag_llm.transport import Request

__all__ = ["OpenStream"]

L = TypeVar("L", AsyncIterator[str], Iterator[str])
T = TypeVar("T")


class OpenStream(Generic[L, T]):
    """A stream that has answered: its lines, parser, and the first item (None if none)."""

    __slots__ = ("api", "first", "lines", "parser", "request")

    def __init__(self, api: APIAdapter, request: Request, lines: L,
                 parser: StreamParser[T]) -> None:
        self.api = api
        self.request = request
        self.lines: L = lines
        self.parser = parser
        self.first: T | None = None

    def check_started(self) -> None:
        """Fail the attempt (retryable) if the body ended before any text or [DONE]."""
        if self.first is None and not self.parser.done:
            raise ConnectionLostError("the stream ended before its first token",
                                      provider=self.api.provider, endpoint=self.request.endpoint)

    def interrupted(self, delivered: int, why: str) -> StreamInterruptedError:
        """The error of a stream broken after ``delivered`` items reached the caller."""
        return StreamInterruptedError(
            f"stream interrupted after {delivered} deltas: {why}",
            provider=self.api.provider, endpoint=self.request.endpoint,
            received="".join(self.parser.received))
