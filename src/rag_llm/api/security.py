"""API-key authentication and request-size limits for the service's own endpoints.

The key is compared in constant time and never logged or echoed. The size limit is enforced
on ``Content-Length`` before the body is read and again while it streams in, so a chunked
request cannot slip past it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_llm.config import Secret

__all__ = ["BodyLimitMiddleware", "api_key_dependency"]

_bearer = HTTPBearer(auto_error=False, description="the service's API key, if one is set")
_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="the service's API key, if one is set")


def api_key_dependency(key: Secret | None) -> Callable[..., object]:
    """A FastAPI dependency that requires ``key`` (Bearer or X-API-Key) when it is set."""
    expected = key.get_secret_value().encode() if key else None

    async def require_api_key(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> None:
        if expected is None:
            return
        given = bearer.credentials if bearer else header
        if not given:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                "missing API key: send 'Authorization: Bearer KEY' or "
                                "'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_api_key


class _TooLargeError(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing passes it on."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


class BodyLimitMiddleware:
    """Answers 413 to a request whose body is over ``limit_for(method, path)`` bytes.

    The answer's body is ``{"detail": ...}``, or what ``body_for(path, message)`` makes of
    it (the OpenAI gateway's routes answer in OpenAI's error shape).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int],
                 body_for: Callable[[str, str], dict[str, Any]] | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.body_for = body_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._reject(send, scope["path"], limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLargeError:
            if not started:
                await self._reject(send, scope["path"], limit)

    async def _reject(self, send: Send, path: str, limit: int) -> None:
        message = _too_large(limit)
        body = json.dumps({"detail": message} if self.body_for is None
                          else self.body_for(path, message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> str:
    return f"request body is over the limit of {limit} bytes"


