"""``StateConfig``: where limits shared by many processes live (a Redis), checked when built.

Without one, every limit is held in the process, as it always was. The URL may carry a
password (``redis://:PASSWORD@host:6379/0``): it is used to connect and never shown, in a
repr, an error, an event or ``rag-llm config check``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from rag_llm.errors import ConfigError
from rag_llm.validation import (
    bad_port_reason,
    check_number,
    check_text,
    redact_bad_url,
    redact_url,
    refuse_unknown,
)

__all__ = [
    "DEFAULT_STATE_PREFIX",
    "DEFAULT_STATE_TIMEOUT",
    "ON_STATE_ERROR",
    "STATE_KEYS",
    "StateConfig",
    "state_config",
]

DEFAULT_STATE_PREFIX: Final = "rag-llm"
# Seconds for one Redis command (connect included): a limiter that waits longer than this
# costs every call more than it saves, so past it the fallback policy decides.
DEFAULT_STATE_TIMEOUT: Final = 0.05
# What a call does when the shared state fails: fall back to local limits, or raise.
ON_STATE_ERROR: Final = ("local", "fail")
# The keys of a ``state`` mapping and of the settings file's ``[state]`` table.
STATE_KEYS: Final = ("url", "prefix", "timeout")
_SCHEMES: Final = ("redis", "rediss")


def _check_state_url(value: object) -> str:
    url = check_text("state.url", value)
    parts = urlsplit(url)
    shown = redact_bad_url(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError("state.url", shown, bad_port_reason(url)) from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ConfigError("state.url", shown,
                          "must be a redis:// or rediss:// (TLS) URL with a host")
    path = parts.path.lstrip("/")
    if path and not path.isdigit():
        raise ConfigError("state.url", shown, "must end in a database number, as /0")
    if parts.fragment:
        raise ConfigError("state.url", shown, "must not have a fragment")
    return url


@dataclass(frozen=True, slots=True)
class StateConfig:
    """A Redis that holds limits shared by every process configured with it.

    Keys are ``{prefix}:{<provider>/<endpoint>}:<what>``; the braces make every key of one
    endpoint hash to the same Redis Cluster slot. ``timeout`` bounds each async call's
    trip to Redis as a whole (a new connection's setup included), and each command of a
    sync call.

    >>> StateConfig("redis://:hunter2@cache:6379/0")
    StateConfig(url='redis://cache:6379/0', prefix='rag-llm', timeout=0.05)
    """

    url: str
    prefix: str = DEFAULT_STATE_PREFIX
    timeout: float = DEFAULT_STATE_TIMEOUT

    def __post_init__(self) -> None:
        _check_state_url(self.url)
        prefix = check_text("state.prefix", self.prefix)
        if any(c in prefix for c in "{} \t\n"):
            raise ConfigError("state.prefix", prefix, "must not hold braces or blanks")
        check_number("state.timeout", self.timeout, minimum=0, exclusive=True)

    @property
    def shown_url(self) -> str:
        """The URL as errors and events show it: no password, no query."""
        return redact_url(self.url)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def __repr__(self) -> str:
        return (f"StateConfig(url={self.shown_url!r}, prefix={self.prefix!r}, "
                f"timeout={self.timeout!r})")


def state_config(value: object) -> StateConfig | None:
    """The ``state`` setting: a URL, a mapping of :data:`STATE_KEYS`, ``"memory"`` or None
    (limits held in the process), or a built :class:`StateConfig`."""
    if value is None or value == "memory":
        return None
    if isinstance(value, StateConfig):
        return value
    if isinstance(value, str):
        return StateConfig(value)
    if not isinstance(value, Mapping):
        raise ConfigError("state", type(value).__name__,
                          "must be a redis:// URL, a mapping of url, prefix and timeout, "
                          "or 'memory'")
    refuse_unknown(value, STATE_KEYS, table="state")
    if "url" not in value:
        raise ConfigError("state.url", None, "is required")
    if value["url"] in (None, "memory"):
        return None
    kwargs: dict[str, Any] = {key: value[key] for key in STATE_KEYS if key in value}
    return StateConfig(**kwargs)
