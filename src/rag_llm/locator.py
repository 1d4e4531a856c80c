"""The service locator: builds providers from settings, hands them out, closes them all.

Its life runs one way, ``OPEN`` -> ``CLOSING`` (``cleanup()`` running) -> ``CLOSED``: once
cleanup has begun, ``get`` and ``register`` raise
:class:`~rag_llm.errors.LocatorClosedError` rather than build a provider nobody would close.

>>> locator = ServiceLocator(Settings(providers={"embedding": {
...     "type": "openai", "model": "text-embedding-3-small", "base_url": "http://127.0.0.1:8001/v1"}}))
>>> locator.get("embedding").max_connections
100
>>> import asyncio; asyncio.run(locator.cleanup())
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rag_llm.config import DEFAULT_DRAIN_TIMEOUT, Settings
from rag_llm.errors import ConfigError, LocatorClosedError
from rag_llm.observability.events import get_logger

__all__ = ["LocatorState", "ServiceLocator", "cleanup_service_locator", "get_service_locator"]

_log = get_logger()
ProviderFactory = Callable[[str, Mapping[str, Any]], Any]


def _default_factory(kind: str, config: Mapping[str, Any]) -> Any:
    from rag_llm.providers import create_provider

    return create_provider(kind, config)


class LocatorState(enum.Enum):
    """Where a locator is in its one-way life; only an ``OPEN`` one hands out providers."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ServiceLocator:
    """Owns every provider's lifecycle: ``register``, ``get`` and, at shutdown, ``cleanup``."""

    def __init__(self, settings: Settings | None = None,
                 factory: ProviderFactory = _default_factory) -> None:
        self._settings = settings
        self._factory = factory
        self._providers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._state = LocatorState.OPEN

    @property
    def state(self) -> LocatorState:
        return self._state

    def _check_open(self, provider_type: str) -> None:
        """Raise unless open; called under the lock."""
        if self._state is not LocatorState.OPEN:
            raise LocatorClosedError(provider_type, self._state.value)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load()
        return self._settings

    def register(self, provider_type: str, provider: Any) -> None:
        """Hand ``provider`` to the locator, which closes it at cleanup."""
        with self._lock:
            self._check_open(provider_type)
            if provider_type in self._providers and self._providers[provider_type] is not provider:
                raise ValueError(
                    f"a {provider_type!r} provider is already registered; close it and "
                    "create a new ServiceLocator to replace it"
                )
            self._providers[provider_type] = provider

    def get(self, provider_type: str) -> Any:
        """The ``provider_type`` provider, built from settings on first use."""
        provider = self._providers.get(provider_type)
        if provider is not None:
            return provider
        with self._lock:
            self._check_open(provider_type)
            provider = self._providers.get(provider_type)
            if provider is None:
                config = self.settings.provider(provider_type)
                if config is None:
                    raise ConfigError(
                        f"providers.{provider_type}", None,
                        "is not configured (config file [providers."
                        f"{provider_type}] or RAG_LLM_{provider_type.upper()}__TYPE)",
                    )
                try:
                    provider = self._factory(provider_type, config)
                except ConfigError as exc:
                    raise self.settings.locate(provider_type, exc) from None
                self._providers[provider_type] = provider
            return provider

    def build_all(self) -> Mapping[str, Any]:
        """Build every configured provider now, so that a bad setting fails at start.

        Building opens no connection; a ``ConfigError`` names the table or variable.
        """
        for provider_type in self.settings.providers:
            self.get(provider_type)
        return self.providers()

    def problems(self) -> dict[str, str]:
        """The configured providers that cannot be built, each with the reason."""
        found: dict[str, str] = {}
        if self._state is not LocatorState.OPEN:
            return found
        for provider_type in self.settings.providers:
            if provider_type not in self._providers:
                try:
                    self.get(provider_type)
                except ConfigError as exc:
                    found[provider_type] = str(exc)
        return found

    def providers(self) -> Mapping[str, Any]:
        """The providers built or registered so far."""
        return dict(self._providers)

    async def awarmup(self) -> None:
        """Build each configured provider that sets ``warmup`` and open its connections now.

        Called at application startup, so that the first requests pay no handshake.
        """
        for provider_type, config in self.settings.providers.items():
            if config.get("warmup"):
                warm = getattr(self.get(provider_type), "awarmup", None)
                if warm is not None:
                    await warm()

    @property
    def drain_timeout(self) -> float:
        """How long ``cleanup()`` lets calls in flight finish: the longest ``drain_timeout``
        of the providers built so far, ``DEFAULT_DRAIN_TIMEOUT`` (10 s) if none has one.

        What a server should give its own requests in flight at shutdown, before the
        lifespan calls ``cleanup()`` (``rag-llm serve`` passes it to uvicorn).
        """
        timeouts = [getattr(getattr(provider, "config", None), "drain_timeout", None)
                    for provider in self._providers.values()]
        return max((t for t in timeouts if isinstance(t, int | float)),
                   default=DEFAULT_DRAIN_TIMEOUT)

    async def cleanup(self) -> None:
        """Close every provider concurrently; one failure does not stop the others.

        From its start the locator refuses ``get`` and ``register``. A second call, even one
        made while the first runs, returns at once.
        """
        started = time.perf_counter()
        with self._lock:
            if self._state is not LocatorState.OPEN:
                return
            self._state = LocatorState.CLOSING
            providers, self._providers = self._providers, {}
        try:
            await self._close_all(providers, started)
        finally:
            self._state = LocatorState.CLOSED

    async def _close_all(self, providers: Mapping[str, Any], started: float) -> None:
        results = await asyncio.gather(
            *(_close(name, provider) for name, provider in providers.items()),
            return_exceptions=True,
        )
        failed = []
        for name, result in zip(providers, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(name)
                _log.error("provider_close_failed", provider=name, error=repr(result))
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if failed:
            _log.error("service_locator_cleanup_failed", providers=len(providers),
                       failed=failed, duration_ms=duration_ms)
        else:
            _log.info("service_locator_cleanup_success", providers=len(providers),
                      duration_ms=duration_ms)


async def _close(name: str, provider: Any) -> None:
    close = getattr(provider, "aclose", None) or getattr(provider, "close", None)
    if not callable(close):
        return
    if inspect.iscoroutinefunction(close):
        await close()
    else:
        # A plain close may block on sockets: keep it off the event loop.
        await asyncio.get_running_loop().run_in_executor(None, close)


_locator: ServiceLocator | None = None
_locator_lock = threading.Lock()


def get_service_locator() -> ServiceLocator:
    """The process-wide locator, created on first use."""
    global _locator
    if _locator is None:
        with _locator_lock:
            if _locator is None:
                _locator = ServiceLocator()
    return _locator


async def cleanup_service_locator() -> None:
    """Close every provider of the process-wide locator and forget it."""
    global _locator
    with _locator_lock:
        locator, _locator = _locator, None
    if locator is not None:
        await locator.cleanup()
