"""Model providers, found by ``type`` in a table, and :func:`create_provider`.

>>> emb = create_provider("embedding", {"type": "openai", "model": "text-embedding-3-small",
...                                     "base_url": "http://127.0.0.1:8001/v1"})
>>> emb.max_connections
100
>>> emb.close()
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Final, Literal, overload

from rag_llm.adapters import AdapterFactory
from rag_llm.adapters.openai import AzureOpenAIAPI, OpenAIAPI
from rag_llm.config import ProviderConfig
from rag_llm.errors import ConfigError
from rag_llm.providers.base import (
    BaseProvider,
    ChatModel,
    ChatProvider,
    Embedder,
    EmbeddingProvider,
)

__all__ = [
    "API_TYPES",
    "KINDS",
    "LOCAL_TYPES",
    "BaseProvider",
    "ChatModel",
    "ChatProvider",
    "Embedder",
    "EmbeddingProvider",
    "create_provider",
]

# type -> (API adapter, default base_url). Every entry speaks the OpenAI wire format.
API_TYPES: Final[Mapping[str, tuple[AdapterFactory, str | None]]] = {
    "openai": (OpenAIAPI, "https://api.openai.com/v1"),
    "azure": (AzureOpenAIAPI, None),
    "vllm": (OpenAIAPI, "http://127.0.0.1:8000/v1"),
    "ollama": (OpenAIAPI, "http://127.0.0.1:11434/v1"),
    "tei": (OpenAIAPI, "http://127.0.0.1:8080/v1"),
    "openai_compatible": (OpenAIAPI, None),
}
# type -> "module:factory" of providers that run in-process; imported only when used, so
# their heavy dependencies (extras) stay off the import path.
LOCAL_TYPES: Final[Mapping[str, str]] = {
    "local": "rag_llm.providers.local:create_local_provider",
}
KINDS: Final[Mapping[str, type[BaseProvider]]] = {
    "embedding": EmbeddingProvider,
    "llm": ChatProvider,
}


@overload
def create_provider(kind: Literal["embedding"], config: Mapping[str, Any]) -> EmbeddingProvider:
    ...


@overload
def create_provider(kind: Literal["llm"], config: Mapping[str, Any]) -> ChatProvider: ...


@overload
def create_provider(kind: str, config: Mapping[str, Any]) -> Any: ...


def create_provider(kind: str, config: Mapping[str, Any]) -> Any:
    """Validate ``config`` and build the ``kind`` (``"embedding"`` or ``"llm"``) provider."""
    provider_class = KINDS.get(kind)
    if provider_class is None:
        raise ConfigError("kind", kind, f"must be one of {', '.join(sorted(KINDS))}")
    provider_type = config.get("type") if isinstance(config, Mapping) else None
    if isinstance(provider_type, str) and provider_type in LOCAL_TYPES:
        module_name, _, factory = LOCAL_TYPES[provider_type].partition(":")
        return getattr(importlib.import_module(module_name), factory)(kind, config)
    if not isinstance(provider_type, str) or provider_type not in API_TYPES:
        known = sorted([*API_TYPES, *LOCAL_TYPES])
        raise ConfigError("type", provider_type, f"must be one of {', '.join(known)}")
    api_class, default_base_url = API_TYPES[provider_type]
    settings = ProviderConfig.from_mapping(config, default_base_url=default_base_url)
    return provider_class(settings, api_class)
