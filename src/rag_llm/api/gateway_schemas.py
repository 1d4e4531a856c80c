"""The OpenAI API's bodies as the gateway reads and writes them, and its error shape.

Requests are checked by hand, not by pydantic models: the gateway passes the chat fields it
does not know through to the upstream unchanged, and a hand check of a dozen fields costs
microseconds where it sits on every call. Every error is OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI would use.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from rag_llm.calls.batching import text_tokens
from rag_llm.errors import (
    CircuitOpenError,
    ConfigError,
    LocalRateLimitError,
    MalformedResponseError,
    ProviderClosedError,
    RagLLMError,
    RateLimitError,
    RequestExceedsBurstError,
    RequestTimeoutError,
    TransportError,
    UpstreamError,
)
from rag_llm.observability.events import scrub_text

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "EmbeddingsRequest",
    "GatewayError",
    "chat_params",
    "embeddings_body",
    "error_from",
    "estimated_tokens",
    "model_name",
    "parse_embeddings",
    "parse_json_object",
]

# OpenAI's own limit on the inputs of one embeddings request.
MAX_EMBEDDING_INPUTS: Final = 2048
_EMBEDDING_FIELDS: Final = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
# The chat fields the gateway consumes itself; every other one goes to the upstream.
_CHAT_OWN_FIELDS: Final = frozenset({"model", "messages", "stream"})
# Upstream statuses that are the client's doing: relayed as they are, not as a 502.
_CLIENT_STATUSES: Final = frozenset({400, 404, 409, 413, 422})


class GatewayError(Exception):
    """An error the gateway answers in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {} if seconds is None else {"retry-after": str(max(1, round(seconds)))}


def error_from(exc: RagLLMError) -> GatewayError:
    """The OpenAI-shaped error for a failed provider call; the message is scrubbed of secrets.

    The statuses are the service's own (a failing upstream is a 502, a timeout a 504, a
    misconfigured or closing provider a 503), except that a refusal the client can act on
    keeps its meaning: an upstream 400/404/422 (a bad tool schema, say) is relayed as it
    is, and rate limits, the upstream's or the client-side ones, are 429s with
    ``Retry-After``, which the openai SDK honours.
    """
    message = scrub_text(str(exc))
    if isinstance(exc, RateLimitError):
        return GatewayError(429, message, type_="requests", code="rate_limit_exceeded",
                            headers=_retry_after(exc.retry_after))
    if isinstance(exc, UpstreamError) and exc.status in _CLIENT_STATUSES:
        return GatewayError(exc.status, scrub_text(exc.message), code="upstream_rejected")
    if isinstance(exc, LocalRateLimitError):
        return GatewayError(429, message, type_="requests", code="rate_limit_exceeded",
                            headers=_retry_after(exc.wait))
    if isinstance(exc, RequestExceedsBurstError):
        return GatewayError(400, message, code="request_too_large")
    if isinstance(exc, CircuitOpenError):
        wait = min(exc.retry_in.values(), default=None)
        return GatewayError(503, message, type_="server_error", code="circuit_open",
                            headers=_retry_after(wait))
    if isinstance(exc, ConfigError):
        return GatewayError(503, f"the service is not configured correctly: {message}",
                            type_="server_error", code="not_configured")
    if isinstance(exc, ProviderClosedError):
        return GatewayError(503, f"the service is shutting down: {message}",
                            type_="server_error", code="shutting_down")
    if isinstance(exc, RequestTimeoutError):
        return GatewayError(504, f"a model provider timed out: {message}",
                            type_="server_error", code="upstream_timeout")
    if isinstance(exc, UpstreamError | TransportError | MalformedResponseError):
        return GatewayError(502, f"a model provider failed: {message}", type_="server_error",
                            code="upstream_error")
    return GatewayError(500, message, type_="server_error")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why not."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayError(400, "We could not parse the JSON body of your request: send a "
                                "JSON object with Content-Type: application/json.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, f"the request body must be a JSON object, not "
                                f"{type(body).__name__}")
    return body


def model_name(body: Mapping[str, Any]) -> str:
    """The body's ``model``: required, a non-empty string."""
    model = body.get("model")
    if model is None:
        raise GatewayError(400, "you must provide a model parameter", param="model",
                           code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, f"'model' must be a non-empty string, not {model!r}",
                           param="model", code="invalid_type")
    return model


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A checked ``POST /v1/embeddings`` body."""

    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise GatewayError(400, "'input' must be a string or a non-empty array of strings",
                           param="input", code="invalid_type")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise GatewayError(400, f"'input' has {len(value)} items; at most "
                                f"{MAX_EMBEDDING_INPUTS} per request", param="input")
    for index, text in enumerate(value):
        if isinstance(text, str):
            if not text:
                raise GatewayError(400, f"'input[{index}]' must not be an empty string",
                                   param=f"input[{index}]")
            continue
        if isinstance(text, int | list) and not isinstance(text, bool):
            raise GatewayError(400, "token-id arrays are not supported as 'input': this "
                                    "gateway embeds text; send the strings themselves",
                               param="input", code="unsupported_input")
        raise GatewayError(400, f"'input[{index}]' must be a string, not "
                                f"{type(text).__name__}", param=f"input[{index}]",
                           code="invalid_type")
    return value


def parse_embeddings(body: Mapping[str, Any]) -> EmbeddingsRequest:
    """The checked embeddings request; a 400 names the first bad field and its value."""
    unknown = sorted(set(body) - _EMBEDDING_FIELDS)
    if unknown:
        raise GatewayError(400, f"Unrecognized request argument supplied: {unknown[0]}",
                           param=unknown[0], code="unknown_parameter")
    model = model_name(body)
    if "input" not in body:
        raise GatewayError(400, "you must provide an input parameter", param="input",
                           code="missing_required_parameter")
    texts = _texts(body["input"])
    encoding = body.get("encoding_format", "float")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise GatewayError(400, f"'encoding_format' must be 'float' or 'base64', not "
                                f"{encoding!r}", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(
            dimensions, bool) or dimensions < 1):
        raise GatewayError(400, f"'dimensions' must be a positive integer, not "
                                f"{dimensions!r}", param="dimensions")
    return EmbeddingsRequest(model, texts, encoding, dimensions)


def estimated_tokens(texts: Sequence[str]) -> int:
    """Prompt tokens of ``texts``: the providers' estimate, four characters a token rounded
    up; an embedder's own tokenizer is not consulted on the hot path."""
    return sum(math.ceil(text_tokens(text)) for text in texts)


def embeddings_body(request: EmbeddingsRequest, model: str,
                    vectors: Sequence[Sequence[float]]) -> bytes:
    """The ``list`` of ``embedding`` objects OpenAI answers, serialized.

    ``base64`` is the vector's little-endian float32 bytes, as OpenAI sends it (and as the
    openai SDK asks for by default).
    """
    if request.dimensions is not None and vectors and len(vectors[0]) != request.dimensions:
        raise GatewayError(400, f"'dimensions' {request.dimensions} is not supported by "
                                f"{model!r}, whose embeddings have {len(vectors[0])}",
                           param="dimensions")
    data: list[dict[str, Any]]
    if request.encoding_format == "base64":
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()}
                for i, v in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(vectors)]
    tokens = estimated_tokens(request.texts)
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def chat_params(body: Mapping[str, Any]) -> tuple[list[Any], bool, dict[str, Any]]:
    """``messages``, ``stream`` and every other field of a chat body, to send as given."""
    messages = body.get("messages")
    if messages is None:
        raise GatewayError(400, "you must provide a messages parameter", param="messages",
                           code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "'messages' must be a non-empty array of message objects",
                           param="messages", code="invalid_type")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise GatewayError(400, f"'messages[{index}]' must be an object with a 'role'",
                               param=f"messages[{index}]", code="invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise GatewayError(400, f"'stream' must be true or false, not {stream!r}",
                           param="stream", code="invalid_type")
    params = {key: value for key, value in body.items() if key not in _CHAT_OWN_FIELDS}
    if "self" in params:  # the provider methods' own parameter: no such API field
        raise GatewayError(400, "Unrecognized request argument supplied: self",
                           param="self", code="unknown_parameter")
    return messages, stream, params
