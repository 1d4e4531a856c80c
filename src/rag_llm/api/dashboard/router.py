"""``dashboard_router()``: the live dashboard page, its event stream and its JSON frame.

Each event stream lives at most ``stream_lifetime`` seconds and then ends with the
response; the browser's ``EventSource`` reconnects on its own after ``retry`` ms. A
server shutting down waits for open responses to finish, so bounding the stream bounds
that wait, whatever the server; a client that disconnects ends its stream at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client.core import Metric

from rag_llm.api.dashboard.feed import dashboard_frame, encode_event, work_frame
from rag_llm.api.dashboard.page import asset, page_html
from rag_llm.metrics import collect_work_metrics
from rag_llm.pool import PoolSnapshot, all_snapshots

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_STREAM_LIFETIME", "dashboard_router"]

DEFAULT_INTERVAL: Final = 1.0
DEFAULT_STREAM_LIFETIME: Final = 5.0
# How long the browser waits before reconnecting once a stream has ended.
_RETRY_MS: Final = 250
_NO_STORE: Final = {"Cache-Control": "no-store"}
_STREAM_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # tells nginx not to buffer the stream
}


async def _events(frame: Callable[[], dict[str, Any]], interval: float,
                  lifetime: float) -> AsyncIterator[str]:
    # Ends by returning after ``lifetime``, or by cancellation when the client goes away
    # (the response then stops iterating and closes this generator).
    # Frames go out on a fixed beat, so the time a frame takes to build does not stretch it.
    loop = asyncio.get_running_loop()
    started = loop.time()
    yield f"retry: {_RETRY_MS}\n\n"
    for beat in itertools.count(1):
        yield encode_event(frame())
        due = started + beat * interval
        if due > started + lifetime:
            return
        await asyncio.sleep(max(due - loop.time(), 0.0))


def dashboard_router(source: Callable[[], list[PoolSnapshot]] = all_snapshots, *,
                     interval: float = DEFAULT_INTERVAL,
                     stream_lifetime: float = DEFAULT_STREAM_LIFETIME,
                     workers: Callable[[], dict[str, Any]] | None = None,
                     families: Callable[[], list[Metric]] = collect_work_metrics) -> APIRouter:
    """Routes ``/dashboard`` (page), ``/dashboard/events`` (SSE) and ``/dashboard/data`` (JSON).

    ``source`` gives the pools to show (default: every live pool of the process; with
    several worker processes, every worker's, and then ``workers`` says which they are);
    ``interval`` is the seconds between events, ``stream_lifetime`` the most seconds
    one event stream stays open before the browser reconnects. ``families`` gives the
    metric families the service's own work is read from (with several workers, theirs
    added up).
    """
    if not interval > 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    if not stream_lifetime >= interval:
        raise ValueError(f"stream_lifetime must be at least interval ({interval!r}), "
                         f"got {stream_lifetime!r}")
    router = APIRouter(tags=["dashboard"])

    def frame() -> dict[str, Any]:
        return dashboard_frame(source(), workers=None if workers is None else workers(),
                               work=work_frame(families()))

    @router.get("/dashboard", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        """The live dashboard: connections, request rate, latency, pool waits and errors."""
        return HTMLResponse(page_html(), headers=_NO_STORE)

    @router.get("/dashboard/data")
    def data() -> JSONResponse:
        """The current frame: per provider and client, counters and latency percentiles."""
        return JSONResponse(frame(), headers=_NO_STORE)

    @router.get("/dashboard/events", response_class=StreamingResponse)
    def events() -> StreamingResponse:
        """Server-sent events: one frame every ``interval`` seconds."""
        return StreamingResponse(_events(frame, interval, stream_lifetime),
                                 media_type="text/event-stream", headers=_STREAM_HEADERS)

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        found = asset(name)
        if found is None:
            raise HTTPException(404, f"no dashboard asset {name!r}")
        return Response(found.body, media_type=found.media_type,
                        headers={"Cache-Control": "public, max-age=300"})

    return router
