"""Server-sent events, line by line: the part of the stream format chat completions use."""

from __future__ import annotations

from typing import Final

__all__ = ["DONE", "sse_data"]

DONE: Final = "[DONE]"


def sse_data(line: str) -> str | None:
    """The payload of a ``data:`` line, or None for comments, blank lines and other fields.

    OpenAI-compatible servers send one JSON object per ``data:`` line and end with
    ``data: [DONE]``; multi-line data fields are not used by them.
    """
    if not line.startswith("data:"):
        return None
    payload = line[5:]
    return payload[1:] if payload.startswith(" ") else payload
