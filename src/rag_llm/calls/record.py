"""One call's record: its timing and outcome, reported to its client's statistics."""

from __future__ import annotations

import time
from types import TracebackType

from rag_llm.errors import MalformedResponseError, RagLLMError, UpstreamError
from rag_llm.observability.stats import ClientStats
from rag_llm.transport import Response

__all__ = ["CallRecord"]


class CallRecord:
    """Times one call and records its outcome: the HTTP status, or what went wrong."""

    __slots__ = ("_first", "_operation", "_started", "_stats", "response", "status")

    def __init__(self, stats: ClientStats, operation: str) -> None:
        self._stats = stats
        self._operation = operation
        self._started = time.perf_counter()
        self._first = True
        self.status = 0
        # A stream's last answer: its status and headers, and an error's body (a relay
        # hands them on as they came).
        self.response: Response | None = None

    def __enter__(self) -> CallRecord:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = time.perf_counter() - self._started
        if exc is None:
            self._stats.request_done(self._operation, str(self.status), seconds)
        elif isinstance(exc, RagLLMError):
            self._stats.request_done(self._operation, _outcome(exc), seconds, exc)
        else:  # cancelled, or a stream abandoned by its reader
            self._stats.request_done(self._operation, "cancelled", seconds)

    def token(self) -> None:
        if self._first:
            self._first = False
            self._stats.first_token(time.perf_counter() - self._started)


def _outcome(exc: RagLLMError) -> str:
    if isinstance(exc, UpstreamError):
        return str(exc.status)
    if isinstance(exc, MalformedResponseError):
        return "malformed"
    return type(exc).__name__
