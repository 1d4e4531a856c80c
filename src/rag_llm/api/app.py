"""``create_app()``: the FastAPI application whose lifespan closes every connection pool."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from rag_llm import __version__
from rag_llm.locator import ServiceLocator, cleanup_service_locator, get_service_locator

__all__ = ["create_app"]


def create_app(locator: ServiceLocator | None = None) -> FastAPI:
    """The service. With no ``locator`` it uses the process-wide one and cleans it at shutdown."""

    def current_locator() -> ServiceLocator:
        return locator if locator is not None else get_service_locator()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if locator is not None:
            await locator.cleanup()
        else:
            await cleanup_service_locator()

    app = FastAPI(title="rag-llm", version=__version__, lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, with the pool of every provider built so far (none is built here)."""
        providers = {
            name: dataclasses.asdict(provider.pool_stats())
            for name, provider in current_locator().providers().items()
            if hasattr(provider, "pool_stats")
        }
        return {"status": "ok", "providers": providers}

    return app
