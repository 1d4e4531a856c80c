"""``/v1/query``: answer a question with citations, whole or as server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from rag_llm.api.dependencies import rag_service
from rag_llm.api.schemas import ErrorOut, QueryIn, QueryOut, StatusOut
from rag_llm.errors import RagLLMError
from rag_llm.observability.events import get_logger, scrub_text

if TYPE_CHECKING:
    from rag_llm.rag import AnswerEvent, RagService

__all__ = ["router"]

_log = get_logger()
Service = Annotated["RagService", Depends(rag_service)]

router = APIRouter(prefix="/v1", tags=["query"])


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(first: AnswerEvent, rest: AsyncIterator[AnswerEvent]) -> AsyncIterator[bytes]:
    yield _sse(first.kind, first.data)
    try:
        async for event in rest:
            data = {"text": event.data} if event.kind == "delta" else event.data
            yield _sse(event.kind, data)
    except RagLLMError as exc:  # the status is sent already: report it as an event
        _log.warning("query_stream_failed", error=type(exc).__name__)
        yield _sse("error", {"detail": f"a model provider failed: {scrub_text(str(exc))}"})


@router.post("/query", response_model=QueryOut, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "the answer; with stream=true, events citations, delta..., done"},
    502: {"model": ErrorOut, "description": "a model provider failed"}})
async def query(body: QueryIn, service: Service) -> QueryOut | StreamingResponse:
    """Retrieve the top-k chunks and answer from them, citing each by number.

    With no chat model configured the answer is extractive. With ``stream`` it comes as
    server-sent events: ``citations`` (a list), ``delta`` (``{"text": ...}``, repeated),
    then ``done`` (``{"mode": ...}``), or ``error`` if the chat model fails midway.
    """
    if body.stream:
        events = service.stream(body.question, body.top_k, body.where())
        # Retrieval runs before the response starts, so its errors keep their status.
        first = await anext(events)
        return StreamingResponse(_events(first, events), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    answer = await service.query(body.question, body.top_k, body.where())
    return QueryOut.model_validate(asdict(answer))


@router.get("/status", response_model=StatusOut, tags=["status"])
async def service_status(service: Service) -> StatusOut:
    """The embedding and chat providers in use and what the store holds."""
    return StatusOut.model_validate(await asyncio.to_thread(service.status))
