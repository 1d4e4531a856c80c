"""Relayed calls: requests another client built (an SDK's), sent through the router as
they are, their answers handed back as they came.

A relayed call is retried, balanced, rate limited and measured like any other; what differs
is that its body passes through unparsed, and that an error status ends it as an answer
(the upstream's last response), not as an exception, once the retries are spent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from rag_llm.calls.batching import estimate_tokens
from rag_llm.errors import UpstreamError

if TYPE_CHECKING:
    from rag_llm.adapters import APIAdapter
    from rag_llm.calls.record import CallRecord
    from rag_llm.transport import Request, Response

__all__ = ["RelayParser", "RelayRequest", "Relayed", "answer_to", "relay_parser",
           "relayed_response"]

L = TypeVar("L")

# An operation's first path segments -> its metrics label; the rest are "other", so that
# paths with ids in them (files/file-abc) never become labels.
_LABELS: Final = {
    "embeddings": "embeddings",
    "chat/completions": "chat",
    "completions": "completions",
    "responses": "responses",
    "models": "models",
    "moderations": "moderations",
}
# Body fields bounding a completion's length: their value counts at the rate limit.
_LENGTH_FIELDS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """One request to relay: ``operation`` is its path below the API's base URL
    (``chat/completions``), ``query`` its query string, ``content`` its body, unchanged.

    ``stream`` (the body asks ``"stream": true``) makes it a streamed call; ``cost`` is
    its weight at a token rate limit. :meth:`of` works both out from the body.
    """

    method: str
    operation: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    stream: bool = False
    cost: float = 0.0

    @classmethod
    def of(cls, method: str, operation: str, query: str, headers: Mapping[str, str],
           content: bytes | None) -> RelayRequest:
        """The request, its ``stream`` and ``cost`` read from a JSON body (if it is one)."""
        body = _json_object(content)
        return cls(method=method.upper(), operation=operation.strip("/"), query=query,
                   headers=headers, content=content,
                   stream=body is not None and body.get("stream") is True,
                   cost=0.0 if body is None else _cost(body))

    @property
    def label(self) -> str:
        """The operation as metrics name it: one of a few, ``_stream`` added for streams."""
        name = "other"
        for prefix, label in _LABELS.items():
            if self.operation == prefix or self.operation.startswith(prefix + "/"):
                name = label
                break
        return f"{name}_stream" if self.stream else name

    def build(self, api: APIAdapter) -> Request:
        return api.relay_request(self.method, self.operation, self.query, self.headers,
                                 self.content)


@dataclass(frozen=True, slots=True)
class Relayed(Generic[L]):
    """A relayed call's answer: ``response`` (status, headers; the body of an answer that
    came whole) and, for a stream that opened, ``lines``, the body line by line."""

    response: Response
    lines: L | None = None


class RelayParser:
    """A stream parser that hands each line on as it is, blank ones too (they end SSE
    events), and keeps none of them: a relayed stream is never held whole.

    The upstream's body framing says where the stream ends: once a line has arrived, an
    end of body is the stream's end (a connection lost mid-body still raises).
    """

    __slots__ = ("done", "received")

    def __init__(self) -> None:
        self.done = False
        self.received: list[str] = []

    def feed(self, line: str) -> str:
        self.done = True
        return line


def relay_parser(api: APIAdapter, request: Request) -> RelayParser:
    return RelayParser()


def relayed_response(call: CallRecord) -> Callable[[APIAdapter, Request, Response], Response]:
    """A ``parse`` for the router's send that hands the response on; an error status is
    raised as the adapter's error (so the retry policy sees it) after being kept in
    ``call``, for :func:`answer_to`."""

    def parse(api: APIAdapter, request: Request, response: Response) -> Response:
        call.response = response
        if response.status >= 400:
            raise api.error(request, response.status, response.headers, response.content)
        return response

    return parse


def answer_to(call: CallRecord, exc: UpstreamError) -> Response | None:
    """The error response behind ``exc``, the error that ended ``call``'s retries, if
    ``call`` kept it; None when the call's last answer was another."""
    response = call.response
    if not isinstance(exc, UpstreamError) or response is None or response.status != exc.status:
        return None
    return response


def _json_object(content: bytes | None) -> dict[str, Any] | None:
    if not content or content[:1] not in (b"{", b" ", b"\n", b"\t", b"\r"):
        return None
    import orjson

    try:
        body = orjson.loads(content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _cost(body: dict[str, Any]) -> float:
    """Rate-limit tokens of a body: the text of its input or messages, plus the completion
    length it allows."""
    texts: list[str] = []
    inputs = body.get("input")
    if isinstance(inputs, str):
        texts.append(inputs)
    elif isinstance(inputs, list):
        texts.extend(item for item in inputs if isinstance(item, str))
    messages = body.get("messages")
    if isinstance(messages, list):
        texts.extend(m["content"] for m in messages
                     if isinstance(m, dict) and isinstance(m.get("content"), str))
    limit = next((body[f] for f in _LENGTH_FIELDS if isinstance(body.get(f), int)), 0)
    return estimate_tokens(texts, limit)
