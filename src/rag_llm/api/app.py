"""``create_app()``: the FastAPI application whose lifespan closes every connection pool.

Routes: ``/v1/documents`` (ingest, list, delete), ``/v1/query`` (answers with citations,
optionally streamed), ``/v1/status``; the OpenAI-compatible ``/v1/embeddings``,
``/v1/chat/completions`` and ``/v1/models`` over the same providers; the pools'
``/health``, ``/health/ready``, ``/metrics`` and live ``/dashboard``; OpenAPI docs at
``/docs``.
The ``/v1`` routes need, when ``api_key`` is set, that key; those of the RAG service the
``rag`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from rag_llm import __version__
from rag_llm.api import documents, query
from rag_llm.api.dashboard import dashboard_router
from rag_llm.api.dependencies import ServiceHolder
from rag_llm.api.errors import install_error_handlers
from rag_llm.api.gateway import gateway_router, too_large_body
from rag_llm.api.observability import observability_router, provider_pools
from rag_llm.api.request_id import RequestIdMiddleware
from rag_llm.api.security import BodyLimitMiddleware, api_key_dependency
from rag_llm.locator import (
    LocatorState,
    ServiceLocator,
    cleanup_service_locator,
    get_service_locator,
)
from rag_llm.workers import WorkerSet

if TYPE_CHECKING:
    from rag_llm.rag import RagService, RagSettings

__all__ = ["create_app", "create_app_from_environment"]


def _rag_settings() -> RagSettings:
    from rag_llm.rag.settings import RagSettings

    return RagSettings.load()


def create_app(locator: ServiceLocator | None = None, *, rag: RagService | None = None,
               rag_settings: RagSettings | None = None) -> FastAPI:
    """The service. With no ``locator`` it uses the process-wide one and cleans it at shutdown.

    The RAG service is ``rag`` if given (the caller closes it), else built on first use from
    the locator's providers and ``rag_settings`` (default: ``RagSettings.load()``).

    Under ``rag-llm serve --workers N`` (``$RAG_LLM_WORKER_DIR`` set), the app writes its
    worker's snapshot there while it runs, and ``/metrics``, ``/health`` and the dashboard
    show every worker's figures added up (:mod:`rag_llm.workers`).
    """

    def current_locator() -> ServiceLocator:
        return locator if locator is not None else get_service_locator()

    settings = rag.settings if rag is not None else rag_settings or _rag_settings()
    holder = ServiceHolder(current_locator, settings, rag)
    workers = WorkerSet.from_environment(lambda: provider_pools(current_locator().providers()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every configured provider is built now: a bad setting stops the start-up, naming
        # the setting, instead of turning the first request into a 503.
        if current_locator().state is LocatorState.OPEN:
            current_locator().build_all()
        await current_locator().awarmup()
        writer = None if workers is None else asyncio.create_task(workers.run())
        yield
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        holder.close()
        if locator is not None:
            await locator.cleanup()
        else:
            await cleanup_service_locator()
        if workers is not None:
            # The last counters, kept for the service's totals; gauges count no more.
            with contextlib.suppress(OSError):
                workers.write(final=True)

    app = FastAPI(title="rag-llm", version=__version__, lifespan=lifespan,
                  description="Retrieval-augmented answers over your documents, through "
                              "pooled model providers.")
    app.state.rag = holder
    install_error_handlers(app)
    uploads = settings.max_upload_bytes
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=lambda method, path: uploads if (method, path) == ("POST", "/v1/documents")
        else settings.max_request_bytes, body_for=too_large_body)
    # The gateway checks the key itself, to answer a refusal in OpenAI's error shape.
    app.include_router(gateway_router(current_locator, settings.api_key))
    guard = [Depends(api_key_dependency(settings.api_key))]
    app.include_router(documents.router, dependencies=guard)
    app.include_router(query.router, dependencies=guard)
    if workers is None:
        app.include_router(dashboard_router())
    else:
        app.include_router(dashboard_router(workers.pools, workers=workers.workers,
                                            families=workers.families))
    app.include_router(observability_router(lambda: current_locator().providers(),
                                            lambda: current_locator().problems(),
                                            workers=workers))
    app.add_middleware(RequestIdMiddleware)

    return app


def create_app_from_environment() -> FastAPI:
    """The service as ``rag-llm serve`` configures it, for uvicorn's ``factory=True``.

    Each worker process calls it: the settings come from ``$RAG_LLM_CONFIG`` and the
    environment (``$RAG_LLM_DATA_DIR`` and the rest), which the parent set from its
    command line, and the locator is this worker's own.
    """
    from rag_llm import _malloc
    from rag_llm.config import Settings
    from rag_llm.observability import configure_logging
    from rag_llm.rag import RagSettings, resolve_settings

    _malloc.one_arena()  # as rag-llm serve does, in each worker
    settings = resolve_settings(Settings.load())
    configure_logging(settings.log_format, settings.log_level)
    locator = ServiceLocator(settings)
    locator.build_all()
    return create_app(locator, rag_settings=RagSettings.load())
