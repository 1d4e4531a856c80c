"""rag-llm: pooled, observable model providers for retrieval-augmented LLM applications.

>>> from rag_llm import create_provider
>>> emb = create_provider("embedding", {"type": "openai", "model": "text-embedding-3-small",
...                                     "base_url": "http://127.0.0.1:8001/v1"})
>>> emb.close()
"""

from __future__ import annotations

__version__ = "0.1.0"

from rag_llm.config import PoolLimits, ProviderConfig, Secret, Settings, Timeouts
from rag_llm.errors import (
    AuthenticationError,
    CircuitOpenError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    DeadlineExceededError,
    LocalRateLimitError,
    LocatorClosedError,
    MalformedResponseError,
    PoolTimeoutError,
    ProviderClosedError,
    RagLLMError,
    RateLimitError,
    ReadTimeoutError,
    RequestExceedsBurstError,
    RequestTimeoutError,
    ServerError,
    StateUnavailableError,
    StoreError,
    StreamInterruptedError,
    TransportError,
    UpstreamError,
    WriteTimeoutError,
)
from rag_llm.locator import ServiceLocator, cleanup_service_locator, get_service_locator
from rag_llm.pool import PoolSnapshot
from rag_llm.providers import ChatProvider, EmbeddingProvider, create_provider

__all__ = [
    "AuthenticationError",
    "ChatProvider",
    "CircuitOpenError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "DeadlineExceededError",
    "EmbeddingProvider",
    "LocalRateLimitError",
    "LocatorClosedError",
    "MalformedResponseError",
    "PoolLimits",
    "PoolSnapshot",
    "PoolTimeoutError",
    "ProviderClosedError",
    "ProviderConfig",
    "RagLLMError",
    "RateLimitError",
    "ReadTimeoutError",
    "RequestExceedsBurstError",
    "RequestTimeoutError",
    "Secret",
    "ServerError",
    "ServiceLocator",
    "Settings",
    "StateUnavailableError",
    "StoreError",
    "StreamInterruptedError",
    "Timeouts",
    "TransportError",
    "UpstreamError",
    "WriteTimeoutError",
    "__version__",
    "cleanup_service_locator",
    "create_provider",
    "get_service_locator",
]
