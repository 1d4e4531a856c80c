"""The RAG service as the routes see it: built on first use, shared, closed at shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request

from rag_llm.errors import ConfigError
from rag_llm.locator import ServiceLocator

if TYPE_CHECKING:
    from rag_llm.rag import RagService, RagSettings

__all__ = ["ServiceHolder", "rag_service"]


class ServiceHolder:
    """Builds the :class:`~rag_llm.rag.RagService` on first use, so an app that only serves
    ``/health`` opens no store and builds no provider.

    ``locator`` may be a callable returning the locator to use now: the process-wide one is
    replaced by a fresh one after each shutdown, and the closed one builds nothing.
    """

    def __init__(self, locator: ServiceLocator | Callable[[], ServiceLocator],
                 settings: RagSettings, service: RagService | None = None) -> None:
        self._locator = locator
        self.settings = settings
        self._service = service
        self._owned = service is None
        self._lock = threading.Lock()

    @property
    def locator(self) -> ServiceLocator:
        locator = self._locator
        return locator if isinstance(locator, ServiceLocator) else locator()

    @property
    def built(self) -> RagService | None:
        return self._service

    async def get(self) -> RagService:
        service = self._service
        if service is None:
            # Opening the store touches the disk: keep it off the event loop.
            service = await asyncio.to_thread(self._build)
        return service

    def _build(self) -> RagService:
        with self._lock:
            if self._service is None:
                try:
                    from rag_llm.rag import RagService
                except ImportError as exc:
                    raise ConfigError("rag", exc.name, "is missing: the /v1 endpoints need "
                                                       "pip install 'rag-llm[rag]'") from None
                self._service = RagService.from_locator(self.locator, self.settings)
            return self._service

    def close(self) -> None:
        """Close the service if this holder built it."""
        if self._service is not None and self._owned:
            self._service.close()
            self._service = None


async def rag_service(request: Request) -> RagService:
    """FastAPI dependency: the app's RAG service."""
    holder: ServiceHolder = request.app.state.rag
    return await holder.get()
