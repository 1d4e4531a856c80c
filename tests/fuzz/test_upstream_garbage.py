"""An upstream that answers garbage: every call fails with rag-llm's own typed error, naming
the provider and the endpoint, within a time bound, on every transport, async and sync.

A real UpstreamServer answers each request with the bytes a ``Fault`` gives it (truncated
JSON, the wrong shapes and types, invalid UTF-8, HTML error pages, SSE garbage, a body past
``max_response_bytes``); the provider reaches it over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import PYREQWEST

from rag_llm import create_provider, errors
from rag_llm.testing import Fault, UpstreamServer

NAME = "garbled"
KEY = "sk-garbage-0123456789abcdef"
# Each call fails within this many seconds: nothing waits for a timeout or buffers for long.
BOUND = 3.0
JSON = {"content-type": "application/json"}
HTML = {"content-type": "text/html; charset=utf-8"}
SSE = {"content-type": "text/event-stream"}
QUESTION = [{"role": "user", "content": "hello"}]
TRANSPORTS = ("aiohttp", "httpx2", PYREQWEST)


def _settings(base_url: str, transport: str, **overrides: Any) -> dict[str, Any]:
    return {"type": "openai", "model": "m", "api_key": KEY, "base_url": base_url,
            "name": NAME, "transport": transport, "read_timeout": 5.0, "deadline": 10.0,
            "retry": {"max_attempts": 1}, **overrides}


def _vector(index: int, embedding: Any) -> dict[str, Any]:
    return {"object": "embedding", "index": index, "embedding": embedding}


def _embeddings(*items: Any) -> bytes:
    return json.dumps({"object": "list", "data": list(items), "model": "m"}).encode()


GOOD_EMBEDDINGS = _embeddings(_vector(0, [0.1, 0.2]), _vector(1, [0.3, 0.4]))

# (case, status, headers, body, the error's class, words its message holds)
EMBEDDING_GARBAGE: list[tuple[str, int, dict[str, str], bytes, type[Exception], str]] = [
    ("truncated JSON", 200, JSON, GOOD_EMBEDDINGS[: len(GOOD_EMBEDDINGS) // 2],
     errors.MalformedResponseError, "not JSON"),
    ("empty body", 200, JSON, b"", errors.MalformedResponseError, "not JSON"),
    ("a JSON list", 200, JSON, b"[1, 2]", errors.MalformedResponseError, "not a JSON object"),
    ("a JSON string", 200, JSON, b'"ok"', errors.MalformedResponseError, "not a JSON object"),
    ("data not a list", 200, JSON, b'{"data": {"0": [0.1]}}', errors.MalformedResponseError,
     "expected 2 embeddings"),
    ("data missing", 200, JSON, b'{"object": "list"}', errors.MalformedResponseError,
     "expected 2 embeddings"),
    ("one vector for two texts", 200, JSON, _embeddings(_vector(0, [0.1])),
     errors.MalformedResponseError, "expected 2 embeddings in 'data', got 1"),
    ("three vectors for two texts", 200, JSON,
     _embeddings(_vector(0, [0.1]), _vector(1, [0.2]), _vector(2, [0.3])),
     errors.MalformedResponseError, "got 3"),
    ("items not objects", 200, JSON, _embeddings([0.1], [0.2]), errors.MalformedResponseError,
     "'index' and 'embedding'"),
    ("index missing", 200, JSON, _embeddings({"embedding": [0.1]}, {"embedding": [0.2]}),
     errors.MalformedResponseError, "'index' and 'embedding'"),
    ("indexes of mixed types", 200, JSON, _embeddings(_vector(0, [0.1]), _vector("1", [0.2])),
     errors.MalformedResponseError, "'index' and 'embedding'"),
    ("indexes repeated", 200, JSON, _embeddings(_vector(0, [0.1]), _vector(0, [0.2])),
     errors.MalformedResponseError, "each 'index' from 0 to 1 must come once"),
    ("indexes out of range", 200, JSON, _embeddings(_vector(1, [0.1]), _vector(2, [0.2])),
     errors.MalformedResponseError, "each 'index' from 0 to 1 must come once"),
    ("embedding of strings", 200, JSON, _embeddings(_vector(0, ["0.1"]), _vector(1, ["0.2"])),
     errors.MalformedResponseError, "list of numbers"),
    ("a string after a number", 200, JSON,
     _embeddings(_vector(0, [0.1, "x"]), _vector(1, [0.2, 0.3])),
     errors.MalformedResponseError, "list of numbers"),
    ("nulls", 200, JSON, _embeddings(_vector(0, [None]), _vector(1, [0.1])),
     errors.MalformedResponseError, "list of numbers"),
    ("nested lists", 200, JSON, _embeddings(_vector(0, [[0.1]]), _vector(1, [[0.2]])),
     errors.MalformedResponseError, "list of numbers"),
    ("an empty vector", 200, JSON, _embeddings(_vector(0, []), _vector(1, [])),
     errors.MalformedResponseError, "list of numbers"),
    ("vectors of different lengths", 200, JSON,
     _embeddings(_vector(0, [0.1, 0.2]), _vector(1, [0.3])),
     errors.MalformedResponseError, "different lengths: 2 and 1"),
    ("base64 where floats were asked", 200, JSON,
     _embeddings(_vector(0, "AAAAAA=="), _vector(1, "AAAAAA==")),
     errors.MalformedResponseError, "list of numbers"),
    ("invalid UTF-8", 200, JSON, b'{"data": "\xff\xfe\xfa"}', errors.MalformedResponseError,
     "not JSON"),
    ("invalid UTF-8 at the start", 200, JSON, b"\xef\xbb\xbf\xff" + GOOD_EMBEDDINGS,
     errors.MalformedResponseError, "not JSON"),
    ("an HTML page with 200", 200, HTML, b"<html><body>Welcome to nginx!</body></html>",
     errors.MalformedResponseError, "not JSON"),
    ("an HTML 502 page", 502, HTML, b"<html><h1>502 Bad Gateway</h1></html>",
     errors.ServerError, "502 Bad Gateway"),
    ("an HTML 404 page", 404, HTML, b"<html>Not Found</html>", errors.UpstreamError,
     "Not Found"),
    ("a 401 that is not JSON", 401, {"content-type": "text/plain"}, b"\xff\xfenope",
     errors.AuthenticationError, "HTTP 401"),
    ("an error of the wrong shape", 400, JSON, b'{"error": [1, 2, 3]}', errors.UpstreamError,
     "HTTP 400"),
    ("no content type", 200, {}, b"\x00\x01\x02", errors.MalformedResponseError, "not JSON"),
]

CHAT_GARBAGE: list[tuple[str, int, dict[str, str], bytes, type[Exception], str]] = [
    ("truncated JSON", 200, JSON, b'{"choices": [{"message": {"content": "hel',
     errors.MalformedResponseError, "not JSON"),
    ("choices not a list", 200, JSON, b'{"choices": {"0": 1}}', errors.MalformedResponseError,
     "choices[0].message.content"),
    ("choices empty", 200, JSON, b'{"choices": []}', errors.MalformedResponseError,
     "choices[0].message.content"),
    ("message a string", 200, JSON, b'{"choices": [{"message": "hi"}]}',
     errors.MalformedResponseError, "choices[0].message.content"),
    ("content a number", 200, JSON, b'{"choices": [{"message": {"content": 7}}]}',
     errors.MalformedResponseError, "is not text"),
    ("invalid UTF-8 in the content", 200, JSON,
     b'{"choices": [{"message": {"content": "\xc3\x28"}}]}', errors.MalformedResponseError,
     "not JSON"),
    ("an HTML page with 200", 200, HTML, b"<!doctype html><p>login required</p>",
     errors.MalformedResponseError, "not JSON"),
    ("an HTML 503 page", 503, HTML, b"<html>Service Unavailable</html>", errors.ServerError,
     "Service Unavailable"),
]

# (case, headers, events, the error's class, words its message holds); each event is sent
# in a chunk of its own, as given.
STREAM_GARBAGE: list[tuple[str, dict[str, str], tuple[bytes, ...], type[Exception], str]] = [
    ("an event that is not JSON", SSE, (b"data: {not json\n\n",),
     errors.MalformedResponseError, "not JSON"),
    ("an event cut short", SSE, (b'data: {"choices": [{"delta": {"content": "he\n\n',),
     errors.MalformedResponseError, "not JSON"),
    ("an event that is a list", SSE, (b"data: [1, 2, 3]\n\n",), errors.MalformedResponseError,
     "not a JSON object"),
    ("invalid UTF-8 in an event", SSE,
     (b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n', b"data: {\xff\n\n"),
     errors.MalformedResponseError, "not JSON"),
    ("an error event", SSE, (b'data: {"error": {"message": "model overloaded"}}\n\n',),
     errors.UpstreamError, "model overloaded"),
    ("an HTML page with 200", HTML, (b"<html>\n", b"<body>Welcome</body>\n", b"</html>\n"),
     errors.MalformedResponseError, "got content-type 'text/html; charset=utf-8'"),
    ("a JSON completion where a stream was asked", JSON,
     (b'{"choices": [{"message": {"content": "hi"}}]}',), errors.MalformedResponseError,
     "application/json"),
    ("comments only", SSE, (b": keep-alive\n\n", b"event: ping\n\n"),
     errors.ConnectionLostError, "the stream ended before its first token"),
    ("an empty event stream", SSE, (), errors.ConnectionLostError,
     "the stream ended before its first token"),
]


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer() as upstream:
        yield upstream


def _check(error: BaseException, kind: type[Exception], words: str, path: str) -> None:
    """``error`` is ``kind`` and says who failed, where, and why, without the key."""
    assert isinstance(error, kind), f"{type(error).__name__}: {error}"
    message = str(error)
    assert isinstance(error, errors.RagLLMError)
    assert getattr(error, "provider", None) == NAME
    assert message.startswith(f"{NAME}: "), message
    assert f"/v1/{path}" in message, message
    assert words in message, message
    assert KEY not in message
    assert KEY not in repr(error)


async def _call(provider: Any, call: str) -> None:
    """Make ``call`` to the end, reading a stream through."""
    if call == "aembed":
        await provider.aembed(["one", "two"])
    elif call == "embed":
        await asyncio.to_thread(provider.embed, ["one", "two"])
    elif call == "achat":
        await provider.achat(QUESTION)
    elif call == "chat":
        await asyncio.to_thread(provider.chat, QUESTION)
    elif call.startswith("astream"):
        async for _ in getattr(provider, call)(QUESTION):
            pass
    else:
        await asyncio.to_thread(lambda: list(getattr(provider, call)(QUESTION)))


async def _failure(provider: Any, call: str) -> tuple[BaseException, float]:
    """What ``call`` raised, and how long it took; a hang fails as a TimeoutError."""
    started = time.monotonic()
    with pytest.raises(Exception) as raised:  # noqa: PT011 - _check checks the type
        await asyncio.wait_for(_call(provider, call), BOUND * 2)
    return raised.value, time.monotonic() - started


async def _run(server: UpstreamServer, transport: str, kind: str, calls: tuple[str, ...],
               fault: Fault, **overrides: Any) -> list[tuple[str, BaseException, float]]:
    provider = create_provider(kind, _settings(server.base_url, transport, **overrides))
    failures = []
    try:
        for call in calls:
            server.add_fault(fault)
            error, took = await _failure(provider, call)
            failures.append((call, error, took))
    finally:
        await provider.aclose()
        provider.close()
    assert server.pending_faults == 0
    return failures


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("case", "status", "headers", "body", "kind", "words"),
                         EMBEDDING_GARBAGE, ids=[c[0] for c in EMBEDDING_GARBAGE])
async def test_garbled_embeddings_raise_a_typed_error_naming_provider_and_endpoint(
        server: UpstreamServer, transport: str, case: str, status: int,
        headers: dict[str, str], body: bytes, kind: type[Exception], words: str) -> None:
    fault = Fault(status=status, headers=headers, content=body, path="/embeddings")
    for call, error, took in await _run(server, transport, "embedding", ("aembed", "embed"),
                                        fault):
        _check(error, kind, words, "embeddings")
        assert took < BOUND, f"{call} took {took:.2f} s"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("case", "status", "headers", "body", "kind", "words"),
                         CHAT_GARBAGE, ids=[c[0] for c in CHAT_GARBAGE])
async def test_garbled_chat_raises_a_typed_error_naming_provider_and_endpoint(
        server: UpstreamServer, transport: str, case: str, status: int,
        headers: dict[str, str], body: bytes, kind: type[Exception], words: str) -> None:
    fault = Fault(status=status, headers=headers, content=body, path="/chat/completions")
    for call, error, took in await _run(server, transport, "llm", ("achat", "chat"), fault):
        _check(error, kind, words, "chat/completions")
        assert took < BOUND, f"{call} took {took:.2f} s"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("case", "headers", "events", "kind", "words"),
                         STREAM_GARBAGE, ids=[c[0] for c in STREAM_GARBAGE])
async def test_garbled_streams_raise_a_typed_error_naming_provider_and_endpoint(
        server: UpstreamServer, transport: str, case: str, headers: dict[str, str],
        events: tuple[bytes, ...], kind: type[Exception], words: str) -> None:
    fault = Fault(status=200, headers=headers, events=events, path="/chat/completions")
    calls = ("astream", "astream_chunks", "stream", "stream_chunks")
    for call, error, took in await _run(server, transport, "llm", calls, fault):
        _check(error, kind, words, "chat/completions")
        assert took < BOUND, f"{call} took {took:.2f} s"


HUGE = 50 * 1024 * 1024


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_past_max_response_bytes_is_refused_not_buffered(
        server: UpstreamServer, transport: str, framing: str) -> None:
    # 50 MB of a valid answer's shape: refused by its content-length before a byte is
    # read, or counted while it streams in chunks and abandoned once past the limit.
    body = b'{"data": "' + b"x" * HUGE + b'"}'
    fault = (Fault(status=200, headers=JSON, content=body, path="/embeddings")
             if framing == "content-length" else
             Fault(status=200, headers=JSON, path="/embeddings",
                   events=tuple(body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20))))
    failures = await _run(server, transport, "embedding", ("aembed", "embed"), fault,
                          max_response_bytes=1 << 20)
    how = (f"content-length {len(body)} is over" if framing == "content-length"
           else "grew past")
    for call, error, took in failures:
        _check(error, errors.MalformedResponseError, f"{how} max_response_bytes=1048576",
               "embeddings")
        assert took < BOUND, f"{call} took {took:.2f} s"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_huge_error_page_is_refused_and_a_body_within_the_limit_is_read(
        server: UpstreamServer, transport: str) -> None:
    page = b"<html>" + b"x" * (2 << 20) + b"</html>"
    fault = Fault(status=502, headers=HTML, content=page, path="/chat/completions")
    calls = ("achat", "astream", "chat", "stream")
    for _, error, _ in await _run(server, transport, "llm", calls, fault,
                                  max_response_bytes=1 << 20):
        _check(error, errors.MalformedResponseError, "max_response_bytes=1048576",
               "chat/completions")
    provider = create_provider("embedding", _settings(server.base_url, transport,
                                                      max_response_bytes=1 << 20))
    try:  # the limit refuses no ordinary answer, and the pool still works after a refusal
        assert await provider.aembed(["one"]) == [server.expected_embedding("one")]
        assert provider.embed(["two"]) == [server.expected_embedding("two")]
    finally:
        await provider.aclose()
        provider.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_line_past_the_limit_is_a_typed_error(
        server: UpstreamServer, transport: str) -> None:
    # aiohttp refuses a line over 512 KiB; httpx reads it whole and the parser refuses it.
    line = b'data: {"choices": [{"delta": {"content": "' + b"x" * (4 << 20) + b'"'
    fault = Fault(status=200, headers=SSE, events=(line, b"\n\n"), path="/chat/completions")
    for call, error, took in await _run(server, transport, "llm", ("astream", "stream"),
                                        fault):
        _check(error, errors.MalformedResponseError, "", "chat/completions")
        assert took < BOUND, f"{call} took {took:.2f} s"
