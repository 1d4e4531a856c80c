"""Turns an upstream's error response into the matching ``UpstreamError``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Final

from rag_llm import errors
from rag_llm.observability.events import REDACTED, scrub_text

__all__ = ["parse_retry_after", "upstream_error"]

_MAX_MESSAGE: Final = 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        wait = _seconds(raw_ms)
        if wait is not None:
            return wait / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    wait = _seconds(raw)
    if wait is not None:
        return wait
    import email.utils  # rare (an HTTP date), and 7 ms to import

    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (ValueError, TypeError, IndexError):  # neither a number nor a date: no hint
        return None
    return max(parsed.timestamp() - time.time(), 0.0)


def _seconds(raw: str) -> float | None:
    """``raw`` as a finite, non-negative number, or None (``inf`` and ``nan`` are no wait)."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return max(value, 0.0) if math.isfinite(value) else None


def _message(content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:_MAX_MESSAGE] or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_MESSAGE]
        if isinstance(error, str):
            return error[:_MAX_MESSAGE]
    return json.dumps(body)[:_MAX_MESSAGE]


def upstream_error(
    *,
    provider: str,
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    secrets: Sequence[str],
) -> errors.UpstreamError:
    """The error for a non-2xx response; the upstream's message is kept, minus ``secrets``
    (the key and configured header values it was sent) and anything shaped like a key."""
    message = scrub_text(_message(content))
    for secret in secrets:
        message = message.replace(secret, REDACTED)
    kind = (errors.RateLimitError if status == 429
            else errors.AuthenticationError if status in (401, 403)
            else errors.ServerError if status >= 500 else errors.UpstreamError)
    return kind(provider=provider, endpoint=endpoint, status=status, message=message,
                retry_after=parse_retry_after(headers))
