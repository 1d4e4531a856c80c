"""The OpenAI-compatible gateway: ``/v1/embeddings``, ``/v1/chat/completions``, ``/v1/models``.

Each call goes through the service's own providers, so it gets their pooling, balancing,
breakers, retries and limits; the bodies are the OpenAI API's, errors included. A streamed
completion is relayed chunk by chunk as it arrives: the response is an async generator, so
each chunk is sent (and waits for the client's socket to take it) before the next is read
from the upstream, and a client that goes away cancels the upstream request.

A request's ``model`` names one of the configured models (``GET /v1/models``), by its id,
its provider's name or its kind (``embedding``, ``llm``).
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from rag_llm.api.gateway_schemas import (
    GatewayError,
    chat_params,
    embeddings_body,
    error_from,
    model_name,
    parse_embeddings,
    parse_json_object,
)
from rag_llm.config import Secret
from rag_llm.errors import RagLLMError
from rag_llm.locator import ServiceLocator
from rag_llm.observability.events import get_logger

__all__ = ["GatewayModel", "gateway_router", "too_large_body"]

_log = get_logger()
_JSON: Final = "application/json"
_DATA: Final = b"data: "
_END: Final = b"\n\n"
_DONE: Final = b"data: [DONE]\n\n"
_KINDS: Final = {"embedding": "an embedding model", "llm": "a chat model"}


@dataclass(frozen=True, slots=True)
class GatewayModel:
    """A configured provider as ``/v1/models`` lists it."""

    id: str
    kind: str  # "embedding" or "llm"
    owned_by: str
    provider: Any
    aliases: frozenset[str]

    def listing(self, created: int) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": created, "owned_by": self.owned_by}


def _model_of(kind: str, provider: Any) -> GatewayModel:
    config = getattr(provider, "config", None)
    model = getattr(config, "model", None) or getattr(provider, "model", None) or provider.name
    owned_by = getattr(config, "type", None) or provider.name
    return GatewayModel(str(model), kind, str(owned_by), provider,
                        frozenset({str(model), str(provider.name), kind}))


_defaults: Any = None


def _provider(locator: ServiceLocator, kind: str) -> Any:
    """The service's ``kind`` provider, as the RAG routes get it: configured, from
    ``OPENAI_*`` in the environment, or (embeddings) the packaged local model."""
    global _defaults
    if _defaults is None:
        try:
            from rag_llm.rag import defaults as found
        except ImportError:  # no rag extra: only what is configured
            _defaults = False
        else:
            _defaults = found
    if _defaults:
        if kind == "embedding":
            return _defaults.embedder(locator)
        return _defaults.chat_model(locator)
    built = locator.providers().get(kind)
    if built is None and locator.settings.provider(kind) is not None:
        built = locator.get(kind)
    return built


class _Catalogue:
    """The models the gateway serves, resolved from the locator on each call (cheaply: the
    providers are built once), so a locator replaced after a shutdown is followed."""

    def __init__(self, locator: Callable[[], ServiceLocator]) -> None:
        self._locator = locator

    def models(self) -> list[GatewayModel]:
        locator = self._locator()
        found = []
        for kind in _KINDS:
            provider = _provider(locator, kind)
            if provider is not None:
                found.append(_model_of(kind, provider))
        return found

    def find(self, name: str, kind: str) -> GatewayModel:
        """The ``kind`` model ``name`` names, or a 404 (400 for the wrong kind) naming the
        ones there are."""
        provider = _provider(self._locator(), kind)
        if provider is not None:  # the common case, without resolving the other kind
            wanted = _model_of(kind, provider)
            if name in wanted.aliases:
                return wanted
        models = self.models()
        available = ", ".join(repr(m.id) for m in models if m.kind == kind)
        for model in models:
            if name in model.aliases:
                raise GatewayError(400, f"the model {name!r} is {_KINDS[model.kind]}, not "
                                        f"{_KINDS[kind]}; {_KINDS[kind]}s here: "
                                        f"{available or 'none'}", param="model",
                                   code="model_not_supported")
        if not available:
            what = ("no chat model is configured ([providers.llm] in the config file or "
                    "RAG_LLM_LLM__TYPE)" if kind == "llm" else "no embedding model is "
                    "configured")
            raise GatewayError(404, f"the model {name!r} does not exist: {what}",
                               param="model", code="model_not_found")
        raise GatewayError(404, f"the model {name!r} does not exist; available: {available}",
                           param="model", code="model_not_found")


def _key_check(key: Secret | None) -> Callable[[Request], None]:
    """Require ``key`` (``Authorization: Bearer``, as the SDK sends it, or ``X-API-Key``)."""
    expected = key.get_secret_value().encode() if key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        headers = request.headers
        given = headers.get("authorization", "")
        scheme, _, credentials = given.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else ""
        token = token or headers.get("x-api-key", "")
        if not token:
            raise GatewayError(401, "You didn't provide an API key: send "
                                    "'Authorization: Bearer KEY'", code="missing_api_key",
                               headers={"www-authenticate": "Bearer"})
        if not hmac.compare_digest(token.encode(), expected):
            raise GatewayError(401, "Incorrect API key provided", code="invalid_api_key",
                               headers={"www-authenticate": "Bearer"})

    return check


def _error_response(error: GatewayError) -> Response:
    return Response(error.json(), status_code=error.status, media_type=_JSON,
                    headers=error.headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _openai_errors(check: Callable[[Request], None]) -> Callable[[Endpoint], Endpoint]:
    """Check the key, then answer every failure in OpenAI's shape: the service's handlers
    speak ``{"detail": ...}``, which OpenAI clients cannot read."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            try:
                check(request)
                return await endpoint(request)
            except GatewayError as error:
                failure = error
            except RagLLMError as exc:
                failure = error_from(exc)
            except Exception as exc:  # never a stack trace to the client
                _log.error("gateway_request_crashed", path=request.url.path,
                           error=type(exc).__name__, exc_info=exc)
                failure = GatewayError(500, "internal server error", type_="server_error")
            if failure.status >= 500 or failure.status == 429:
                _log.warning("gateway_request_failed", path=request.url.path,
                             status=failure.status, code=failure.code, detail=failure.message)
            return _error_response(failure)

        return guarded

    return wrap


class _Relay(StreamingResponse):
    """Server-sent events from ``events``, closed however the response ends: a client that
    disconnects cancels the send, and closing the generator then closes the upstream
    stream at once instead of when the garbage collector finds it."""

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


async def _events(first: Mapping[str, Any] | None,
                  chunks: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[bytes, None]:
    """``data: <chunk>`` per chunk, then ``data: [DONE]``; a failure once the stream has
    started is an OpenAI error event, and the stream ends there."""
    try:
        if first is not None:
            yield _DATA + orjson.dumps(first) + _END
            async for chunk in chunks:
                yield _DATA + orjson.dumps(chunk) + _END
    except RagLLMError as exc:
        error = error_from(exc)
        _log.warning("gateway_stream_failed", status=error.status, detail=error.message)
        yield _DATA + error.json() + _END
        return
    finally:
        await chunks.aclose()
    yield _DONE


def _chat_methods(model: GatewayModel) -> tuple[Any, Any]:
    provider = model.provider
    whole = getattr(provider, "achat_completion", None)
    chunks = getattr(provider, "astream_chunks", None)
    if whole is None or chunks is None:
        raise GatewayError(501, f"the chat model {model.id!r} does not offer OpenAI "
                                "completion objects", type_="server_error",
                           code="not_implemented")
    return whole, chunks


def too_large_body(path: str, message: str) -> dict[str, Any]:
    """The 413 body for ``path``: OpenAI's error shape on the gateway's routes."""
    if path.startswith(("/v1/embeddings", "/v1/chat/completions", "/v1/models")):
        return GatewayError(413, message, code="request_too_large").body()
    return {"detail": message}


# The bodies the gateway reads (it parses them itself, to answer in OpenAI's error shape):
# documented so that clients and schema-driven tests know them.
_EMBEDDINGS_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
    },
}
_CHAT_BODY: Final[dict[str, Any]] = {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}},
        "stream": {"type": "boolean"},
    },
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {_JSON: {"schema": schema}}}}


def gateway_router(locator: Callable[[], ServiceLocator], api_key: Secret | None) -> APIRouter:
    """The gateway's routes over the providers of ``locator()``, guarded by ``api_key``."""
    catalogue = _Catalogue(locator)
    guarded = _openai_errors(_key_check(api_key))
    created = int(time.time())
    router = APIRouter(prefix="/v1", tags=["openai"])

    @router.get("/models", summary="List the models (OpenAI API)")
    @guarded
    async def list_models(request: Request) -> Response:
        """The configured models in OpenAI's list shape."""
        data = [m.listing(created) for m in catalogue.models()]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=_JSON)

    @router.get("/models/{model:path}", summary="Retrieve a model (OpenAI API)")
    @guarded
    async def retrieve_model(request: Request) -> Response:
        """One configured model, by any name it answers to."""
        name = request.path_params["model"]
        for model in catalogue.models():
            if name in model.aliases:
                return Response(orjson.dumps(model.listing(created)), media_type=_JSON)
        available = ", ".join(repr(m.id) for m in catalogue.models()) or "none"
        raise GatewayError(404, f"the model {name!r} does not exist; available: {available}",
                           param="model", code="model_not_found")

    @router.post("/embeddings", summary="Create embeddings (OpenAI API)",
                 openapi_extra=_body(_EMBEDDINGS_BODY))
    @guarded
    async def embeddings(request: Request) -> Response:
        """Vectors of ``input`` (a string or an array of strings) from the named model;
        ``encoding_format`` ``float`` or ``base64``."""
        body = parse_embeddings(parse_json_object(await request.body()))
        model = catalogue.find(body.model, "embedding")
        vectors = await model.provider.aembed(body.texts)
        return Response(embeddings_body(body, model.id, vectors), media_type=_JSON)

    @router.post("/chat/completions", summary="Create a chat completion (OpenAI API)",
                 openapi_extra=_body(_CHAT_BODY))
    @guarded
    async def chat_completions(request: Request) -> Response:
        """A completion from the named chat model, whole or (``stream``) as server-sent
        events; every field but ``model`` and ``stream`` goes to the upstream as given."""
        raw = parse_json_object(await request.body())
        name = model_name(raw)
        messages, stream, params = chat_params(raw)
        model = catalogue.find(name, "llm")
        whole, streamed = _chat_methods(model)
        if not stream:
            completion = await whole(messages, **params)
            return Response(orjson.dumps(completion), media_type=_JSON)
        chunks: AsyncGenerator[dict[str, Any], None] = streamed(messages, **params)
        try:
            # The first chunk is awaited here so that a failure before anything was sent
            # keeps its status (a 502, a 429...) instead of becoming an event.
            first: dict[str, Any] | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await chunks.aclose()
            raise
        return _Relay(_events(first, chunks))

    return router

