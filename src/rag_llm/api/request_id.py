"""Request IDs: taken from ``X-Request-ID`` or made up, bound to every log line, echoed back."""

from __future__ import annotations

import re
import uuid
from typing import Final

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware"]

HEADER: Final = b"x-request-id"
# A caller's ID is kept only if it is short and plain, so it cannot forge log lines.
_VALID: Final = re.compile(r"[A-Za-z0-9._\-]{1,64}")


class RequestIdMiddleware:
    """Pure ASGI middleware: every event logged while serving a request carries its ID."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (HEADER, request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == HEADER:
            candidate: str = value.decode("latin-1")
            if _VALID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex
