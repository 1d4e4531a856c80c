"""Deterministic OpenAI and Azure OpenAI endpoint behaviour, independent of sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag_llm.testing._records import RecordedRequest

MODELS = ("text-embedding-3-small", "gpt-4o-mini")

_AZURE_PATH = re.compile(
    r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<op>embeddings|chat/completions)$"
)
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
_ids = itertools.count(1)

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout", None),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class Reply:
    """An HTTP response to send: a whole ``body``, or SSE ``events`` when streamed."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    events: tuple[bytes, ...] | None = None

    @property
    def streamed(self) -> bool:
        return self.events is not None


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error payload for ``status``."""
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "api_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def json_reply(status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status, (("content-type", "application/json"), *headers), body)


def error_reply(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return json_reply(status, error_body(status, message), headers)


def expected_embedding(text: str, dim: int) -> list[float]:
    """The unit-length vector the server returns for ``text``.

    Derived from SHAKE-256 of the UTF-8 text, so it is stable across runs and
    machines and differs between texts.
    """
    if dim < 1:
        raise ValueError("dim must be at least 1")
    raw = struct.unpack(f"<{dim}H", hashlib.shake_256(text.encode()).digest(2 * dim))
    vector = [value / 32767.5 - 1.0 for value in raw]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def chat_content(messages: Sequence[Any]) -> str:
    """The reply text: ``"echo: "`` followed by the last user message."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return "echo: " + _text_of(message.get("content"))
    return "echo: "


def stream_pieces(content: str) -> list[str]:
    """Split ``content`` into word-sized pieces that join back to it exactly."""
    return [piece for piece in _WORD_BOUNDARY.split(content) if piece]


def route(request: RecordedRequest, *, api_key: str | None, embedding_dim: int) -> Reply:
    """Produce the reply an OpenAI-compatible upstream would give to ``request``."""
    if api_key is not None and not _authorized(request.headers, api_key):
        return error_reply(401, "Incorrect API key provided.")
    path = request.path
    if path == "/v1/models":
        return _require(request, "GET") or json_reply(200, _models())
    if path in ("/v1/embeddings", "/v1/chat/completions"):
        operation = path.removeprefix("/v1/")
        return _require(request, "POST") or _dispatch(request, operation, None, embedding_dim)
    match = _AZURE_PATH.match(path)
    if match is not None:
        if "api-version" not in request.query:
            return error_reply(400, "Missing required query parameter: api-version.")
        return _require(request, "POST") or _dispatch(
            request, match["op"], match["deployment"], embedding_dim
        )
    return error_reply(404, f"Invalid URL ({request.method} {path})")


def _dispatch(
    request: RecordedRequest, operation: str, deployment: str | None, embedding_dim: int
) -> Reply:
    payload = request.json
    if not isinstance(payload, dict):
        return error_reply(400, "We could not parse the JSON body of your request.")
    model = payload.get("model") or deployment or MODELS[0]
    if operation == "embeddings":
        return _embeddings(payload, str(model), embedding_dim)
    return _chat(payload, str(model))


def _embeddings(payload: dict[str, Any], model: str, embedding_dim: int) -> Reply:
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return error_reply(400, "'input' must be a string or a non-empty list of strings.")
    dim = payload.get("dimensions", embedding_dim)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        return error_reply(400, "'dimensions' must be a positive integer.")
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return error_reply(400, "'encoding_format' must be 'float' or 'base64'.")
    data = []
    for index, text in enumerate(texts):
        vector = expected_embedding(text, dim)
        encoded: list[float] | str = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(_count_tokens(text) for text in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_reply(200, {"object": "list", "data": data, "model": model, "usage": usage})


def _chat(payload: dict[str, Any], model: str) -> Reply:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_reply(400, "'messages' must be a non-empty list.")
    content = chat_content(messages)
    prompt_tokens = sum(
        _count_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict)
    )
    completion_tokens = _count_tokens(content)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    completion_id = f"chatcmpl-{next(_ids)}"
    base = {"id": completion_id, "created": int(time.time()), "model": model}
    if payload.get("stream"):
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return _chat_stream(base, content, usage if include_usage else None)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "logprobs": None,
        "finish_reason": "stop",
    }
    completion = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
    return json_reply(200, completion)


def _chat_stream(base: dict[str, Any], content: str, usage: dict[str, int] | None) -> Reply:
    """SSE events: one chunk per word, a ``stop`` chunk, optional usage, then ``[DONE]``."""
    base = {**base, "object": "chat.completion.chunk"}
    chunks: list[dict[str, Any]] = []
    for n, piece in enumerate(stream_pieces(content)):
        delta = {"role": "assistant", "content": piece} if n == 0 else {"content": piece}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage is not None:
        chunks.append({**base, "choices": [], "usage": usage})
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    events.append(b"data: [DONE]\n\n")
    headers = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
    return Reply(200, headers, events=tuple(events))


def _models() -> dict[str, Any]:
    data = [
        {"id": model, "object": "model", "created": 1700000000, "owned_by": "system"}
        for model in MODELS
    ]
    return {"object": "list", "data": data}


def _require(request: RecordedRequest, method: str) -> Reply | None:
    if request.method == method:
        return None
    return error_reply(405, f"Method {request.method} not allowed.", [("allow", method)])


def _authorized(headers: dict[str, str], api_key: str) -> bool:
    bearer = headers.get("authorization", "")
    scheme, _, token = bearer.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return True
    return hmac.compare_digest(headers.get("api-key", "").encode(), api_key.encode())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _count_tokens(text: str) -> int:
    return len(text.split())
