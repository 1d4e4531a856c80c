"""Pool limits and timeouts of one provider, with the defaults they start from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from rag_llm.errors import ConfigError
from rag_llm.validation import check_number

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_KEEPALIVE_CONNECTIONS",
    "PoolLimits",
    "Timeouts",
]

DEFAULT_MAX_KEEPALIVE_CONNECTIONS: Final = 20
DEFAULT_MAX_CONNECTIONS: Final = 100
DEFAULT_KEEPALIVE_EXPIRY: Final = 30.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_READ_TIMEOUT: Final = 60.0
DEFAULT_WRITE_TIMEOUT: Final = 10.0
# Seconds, not minutes: an exhausted pool must fail fast and say what to raise.
DEFAULT_POOL_TIMEOUT: Final = 5.0
# No token for this long after the request, or between two tokens, ends a stream.
DEFAULT_FIRST_TOKEN_TIMEOUT: Final = 60.0
DEFAULT_STREAM_IDLE_TIMEOUT: Final = 60.0


class _FollowsMaxConnections:
    """The default keep-alive: 20, or ``max_connections`` when that is smaller."""

    def __repr__(self) -> str:
        return "<min(20, max_connections)>"


# Typed as an int so the field keeps its type; replaced in __post_init__.
_KEEPALIVE_DEFAULT: Final = cast(int, _FollowsMaxConnections())


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Connection-pool limits of one provider.

    ``max_keepalive_connections`` idle connections are kept open for reuse, at most
    ``max_connections`` exist at once to each endpoint, and an idle one is closed after
    ``keepalive_expiry`` seconds. Left unset, the keep-alive limit is 20, or
    ``max_connections`` when that is smaller.

    >>> PoolLimits(max_keepalive_connections=20, max_connections=100, keepalive_expiry=30.0)
    PoolLimits(max_keepalive_connections=20, max_connections=100, keepalive_expiry=30.0)
    >>> PoolLimits(max_connections=5).max_keepalive_connections
    5
    """

    max_keepalive_connections: int = _KEEPALIVE_DEFAULT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY

    def __post_init__(self) -> None:
        check_number("max_connections", self.max_connections, integer=True, minimum=1)
        if self.max_keepalive_connections is _KEEPALIVE_DEFAULT:
            object.__setattr__(self, "max_keepalive_connections",
                               min(DEFAULT_MAX_KEEPALIVE_CONNECTIONS, self.max_connections))
        check_number("max_keepalive_connections", self.max_keepalive_connections, integer=True,
                     minimum=0)
        check_number("keepalive_expiry", self.keepalive_expiry, integer=False, minimum=0)
        if self.max_keepalive_connections > self.max_connections:
            raise ConfigError(
                "max_keepalive_connections",
                self.max_keepalive_connections,
                f"must not exceed max_connections={self.max_connections}",
            )


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds: connecting, reading, writing, waiting for a pooled connection,
    and for streams the first token and the gap between two tokens (async streams).

    >>> Timeouts(connect=5.0, read=60.0, write=10.0, pool=5.0).first_token
    60.0
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT
    write: float = DEFAULT_WRITE_TIMEOUT
    pool: float = DEFAULT_POOL_TIMEOUT
    first_token: float = DEFAULT_FIRST_TOKEN_TIMEOUT
    stream_idle: float = DEFAULT_STREAM_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool", "first_token", "stream_idle"):
            check_number(f"{name}_timeout", getattr(self, name), minimum=0, exclusive=True)
