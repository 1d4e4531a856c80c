"""The one request and the fixed responses every client sends and parses: same work for all."""

from __future__ import annotations

import json
import random
from typing import Any, Final

__all__ = [
    "API_KEY",
    "CHAT_RESPONSE",
    "DIMENSIONS",
    "EMBEDDINGS_RESPONSE",
    "MODEL",
    "REQUEST_BODY",
    "REQUEST_HEADERS",
    "TEXT",
    "check_vectors",
    "parse_vectors",
]

MODEL: Final = "text-embedding-3-small"
API_KEY: Final = "sk-bench"
TEXT: Final = "The quick brown fox jumps over the lazy dog"
# The size of a real text-embedding-3-small vector, so JSON parsing costs what it costs.
DIMENSIONS: Final = 1536

REQUEST_BODY: Final = json.dumps({"model": MODEL, "input": [TEXT]}, separators=(",", ":")).encode()
REQUEST_HEADERS: Final = {
    "content-type": "application/json",
    "accept": "application/json",
    "authorization": f"Bearer {API_KEY}",
}


def _embeddings_response() -> str:
    rng = random.Random(5)  # noqa: S311 - fixed seed: the same bytes in every run
    vector = [round(rng.gauss(0.0, 0.03), 9) for _ in range(DIMENSIONS)]
    body: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": MODEL,
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
    }
    return json.dumps(body, separators=(",", ":"))


EMBEDDINGS_RESPONSE: Final = _embeddings_response()
CHAT_RESPONSE: Final = json.dumps({
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello from the benchmark."}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
}, separators=(",", ":"))


def _chunk(delta: dict[str, str], finish: str | None) -> str:
    return "data: " + json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }, separators=(",", ":")) + "\n\n"


# The same answer as an event stream (``stream: true``), in three chunks.
CHAT_STREAM_RESPONSE: Final = (
    _chunk({"role": "assistant", "content": "Hello from"}, None)
    + _chunk({"content": " the benchmark."}, None) + _chunk({}, "stop") + "data: [DONE]\n\n")


def parse_vectors(content: bytes | str) -> list[list[float]]:
    """What every raw client does with the body: JSON into a list of float vectors."""
    return [item["embedding"] for item in json.loads(content)["data"]]


def check_vectors(vectors: object) -> None:
    """Raise unless ``vectors`` is one vector of DIMENSIONS floats (what the server sent)."""
    if not isinstance(vectors, list) or len(vectors) != 1:
        raise ValueError(f"expected 1 vector, got {type(vectors).__name__}")
    vector = vectors[0]
    if not isinstance(vector, list) or len(vector) != DIMENSIONS or not isinstance(
        vector[0], float
    ):
        raise ValueError("expected a list of 1536 floats")
