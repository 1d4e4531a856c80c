"""Which providers the RAG service uses when the configuration leaves them out.

- An embedding or chat provider that is configured is used as it is; a partial one (only
  ``base_url`` and ``model`` set through the environment, say) gets a ``type``.
- Otherwise, with ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` set, both come from that
  OpenAI-compatible API (``text-embedding-3-small`` and ``gpt-4o-mini`` unless
  ``OPENAI_EMBEDDING_MODEL`` / ``OPENAI_CHAT_MODEL`` say otherwise).
- Otherwise embeddings come from the packaged local model and there is no chat provider,
  so answers are extractive.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, Final

from rag_llm.config import Secret, Settings
from rag_llm.locator import ServiceLocator
from rag_llm.providers import ChatModel, Embedder, create_provider

__all__ = [
    "DEFAULT_OPENAI_CHAT_MODEL",
    "DEFAULT_OPENAI_EMBEDDING_MODEL",
    "chat_model",
    "embedder",
    "resolve_settings",
]

DEFAULT_OPENAI_EMBEDDING_MODEL: Final = "text-embedding-3-small"
DEFAULT_OPENAI_CHAT_MODEL: Final = "gpt-4o-mini"
_LOCAL_EMBEDDING: Final[Mapping[str, Any]] = {"type": "local"}
_register_lock = threading.Lock()


def _openai_default(kind: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    key, base_url = env.get("OPENAI_API_KEY"), env.get("OPENAI_BASE_URL")
    if not key and not base_url:
        return None
    if kind == "embedding":
        model = env.get("OPENAI_EMBEDDING_MODEL", DEFAULT_OPENAI_EMBEDDING_MODEL)
    else:
        model = env.get("OPENAI_CHAT_MODEL", DEFAULT_OPENAI_CHAT_MODEL)
    config: dict[str, Any] = {"type": "openai", "model": model}
    if base_url:
        config["base_url"] = base_url
    if key:
        config["api_key"] = Secret(key)
    return config


def _complete(kind: str, config: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``config`` with a ``type`` and ``model`` where only the rest was given."""
    completed = dict(config)
    if "type" not in completed:
        completed["type"] = "openai_compatible" if "base_url" in completed else "openai"
    if completed["type"] in ("openai", "azure") and "model" not in completed:
        completed["model"] = (DEFAULT_OPENAI_EMBEDDING_MODEL if kind == "embedding"
                              else DEFAULT_OPENAI_CHAT_MODEL)
    key = env.get("OPENAI_API_KEY")
    if key and completed["type"] == "openai" and not completed.get("api_key"):
        completed["api_key"] = Secret(key)
    return completed


def resolve_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """``settings`` with the embedding and chat providers the service will use filled in."""
    env = os.environ if environ is None else environ
    providers = {kind: dict(values) for kind, values in settings.providers.items()}
    for kind in ("embedding", "llm"):
        configured = providers.get(kind)
        if configured:
            providers[kind] = _complete(kind, configured, env)
            continue
        default = _openai_default(kind, env)
        if default is not None:
            providers[kind] = default
        elif kind == "embedding":
            providers[kind] = dict(_LOCAL_EMBEDDING)
        else:
            providers.pop(kind, None)
    return settings.with_providers(providers, _sources(settings, providers, env))


# Filled-in values that come from these variables; every other one is a default.
_FROM_ENV: Final = {"api_key": "OPENAI_API_KEY", "base_url": "OPENAI_BASE_URL"}


def _sources(settings: Settings, providers: Mapping[str, Mapping[str, Any]],
             env: Mapping[str, str]) -> dict[str, str]:
    """``settings.sources`` plus where each value filled in here came from."""
    sources = dict(settings.sources)
    for kind, values in providers.items():
        given = settings.providers.get(kind, {})
        for key in values:
            if key in given:
                continue
            variable = _FROM_ENV.get(key) or (
                ("OPENAI_EMBEDDING_MODEL" if kind == "embedding" else "OPENAI_CHAT_MODEL")
                if key == "model" else None)
            sources[f"providers.{kind}.{key}"] = (
                f"environment {variable}" if variable and variable in env else "default")
    return sources


def _provider(locator: ServiceLocator, kind: str, environ: Mapping[str, str] | None) -> Any:
    """The locator's ``kind`` provider, registering the default when settings name none."""
    built = locator.providers().get(kind)
    if built is not None:
        return built
    configured = locator.settings.provider(kind)
    config = resolve_settings(locator.settings, environ).provider(kind)
    if config is None:
        return None
    if configured is not None and dict(configured) == config:
        return locator.get(kind)
    with _register_lock:
        built = locator.providers().get(kind)
        if built is None:
            built = create_provider(kind, config)
            locator.register(kind, built)
    return built


def embedder(locator: ServiceLocator, environ: Mapping[str, str] | None = None) -> Embedder:
    """The embedding provider: configured, OpenAI-compatible from the environment, or local."""
    provider: Embedder = _provider(locator, "embedding", environ)
    return provider


def chat_model(locator: ServiceLocator,
               environ: Mapping[str, str] | None = None) -> ChatModel | None:
    """The chat provider, or ``None`` when none is configured (answers are then extractive)."""
    provider: ChatModel | None = _provider(locator, "llm", environ)
    return provider
