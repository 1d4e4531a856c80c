"""Exception handlers: clear JSON errors with the right status, and never a stack trace.

Validation errors are 422s listing each invalid field; a misconfigured provider or store is
a 503, and so is a request that arrives once the providers are being closed; a store that
cannot write is a 507 when out of space, else a 503; a failing upstream model API is a 502;
anything unexpected is a 500 that says only that, while the traceback goes to the server's
log.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rag_llm.errors import (
    ConfigError,
    MalformedResponseError,
    ProviderClosedError,
    RagLLMError,
    RequestTimeoutError,
    StoreError,
    TransportError,
    UpstreamError,
)
from rag_llm.observability.events import get_logger, scrub_text

__all__ = ["install_error_handlers"]

_log = get_logger()


def _field(location: tuple[object, ...]) -> str:
    parts = [str(part) for part in location]
    if len(parts) > 1 and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
              for e in exc.errors()]
    fields = ", ".join(e["field"] for e in errors)
    return JSONResponse({"detail": f"invalid request: {fields}", "errors": errors},
                        status_code=422)


async def _rag_error(request: Request, exc: Exception) -> JSONResponse:
    message = scrub_text(str(exc))
    if isinstance(exc, ConfigError):
        status, detail = 503, f"the service is not configured correctly: {message}"
    elif isinstance(exc, StoreError):
        status = 507 if exc.full else 503
        detail = f"the document store failed: {message}"
    elif isinstance(exc, ProviderClosedError):  # a closed locator's LocatorClosedError too
        status, detail = 503, f"the service is shutting down: {message}"
    elif isinstance(exc, RequestTimeoutError):
        status, detail = 504, f"a model provider timed out: {message}"
    elif isinstance(exc, UpstreamError | TransportError | MalformedResponseError):
        status, detail = 502, f"a model provider failed: {message}"
    else:
        status, detail = 500, message
    _log.warning("request_failed", path=request.url.path, status=status,
                 error=type(exc).__name__, detail=message)
    return JSONResponse({"detail": detail}, status_code=status)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    _log.error("request_crashed", path=request.url.path, error=type(exc).__name__,
               exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RagLLMError, _rag_error)
    app.add_exception_handler(Exception, _unexpected_error)
