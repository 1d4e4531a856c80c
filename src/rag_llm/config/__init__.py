"""Frozen, validated settings: pool limits, timeouts, provider configs and their loading.

Every value is checked when the object is built, whichever way it is built (constructor,
mapping, file or environment); a bad one raises :class:`ConfigError` naming the field and
the value, and an unknown key names the closest known one. API keys are held in
:class:`Secret`, which never shows its value in a repr, a log line or an error.
"""

from __future__ import annotations

from rag_llm.config._limits import (
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_KEEPALIVE_CONNECTIONS,
    PoolLimits,
    Timeouts,
)
from rag_llm.config._provider import (
    DEFAULT_DEADLINE,
    DEFAULT_DRAIN_TIMEOUT,
    ENDPOINT_KEYS,
    FIELD_TYPES,
    TRANSPORTS,
    EndpointConfig,
    ProviderConfig,
)
from rag_llm.config._secret import Secret
from rag_llm.config._settings import ENV_PREFIX, Settings, read_config_file
from rag_llm.config._state import (
    DEFAULT_STATE_PREFIX,
    DEFAULT_STATE_TIMEOUT,
    ON_STATE_ERROR,
    STATE_KEYS,
    StateConfig,
    state_config,
)
from rag_llm.validation import check_number

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_KEEPALIVE_CONNECTIONS",
    "DEFAULT_STATE_PREFIX",
    "DEFAULT_STATE_TIMEOUT",
    "ENDPOINT_KEYS",
    "ENV_PREFIX",
    "FIELD_TYPES",
    "ON_STATE_ERROR",
    "STATE_KEYS",
    "TRANSPORTS",
    "EndpointConfig",
    "PoolLimits",
    "ProviderConfig",
    "Secret",
    "Settings",
    "StateConfig",
    "Timeouts",
    "check_number",
    "read_config_file",
    "state_config",
]
