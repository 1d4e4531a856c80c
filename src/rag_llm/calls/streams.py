"""A chat stream that has answered, as async and sync readers share it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from rag_llm.adapters import APIAdapter, StreamParser
from rag_llm.errors import ConnectionLostError, MalformedResponseError, StreamInterruptedError
from rag_llm.transport import Request

__all__ = ["OpenStream"]

L = TypeVar("L", AsyncIterator[str], Iterator[str])
T = TypeVar("T")

_EVENT_STREAM = "text/event-stream"


class OpenStream(Generic[L, T]):
    """A stream that has answered: its lines, parser, and the first item (None if none)."""

    __slots__ = ("api", "content_type", "first", "lines", "parser", "request")

    def __init__(self, api: APIAdapter, request: Request, lines: L,
                 parser: StreamParser[T], content_type: str = "") -> None:
        self.api = api
        self.request = request
        self.lines: L = lines
        self.parser = parser
        self.content_type = content_type
        self.first: T | None = None

    def check_started(self) -> None:
        """Fail the attempt if the body ended before any text or [DONE]: as malformed when
        it was no event stream (an HTML page, or a whole completion from a server that
        ignored ``stream``), else as a lost connection, which is retried."""
        if self.first is not None or self.parser.done:
            return
        if _EVENT_STREAM not in self.content_type.lower():
            raise MalformedResponseError(
                provider=self.api.provider, endpoint=self.request.endpoint,
                detail=f"expected an event stream ({_EVENT_STREAM}), got content-type "
                       f"{self.content_type or '(none)'!r} and no data event")
        raise ConnectionLostError("the stream ended before its first token",
                                  provider=self.api.provider, endpoint=self.request.endpoint)

    def interrupted(self, delivered: int, why: str) -> StreamInterruptedError:
        """The error of a stream broken after ``delivered`` items reached the caller."""
        return StreamInterruptedError(
            f"stream interrupted after {delivered} deltas: {why}",
            provider=self.api.provider, endpoint=self.request.endpoint,
            received="".join(self.parser.received))
