"""Frozen, validated settings: pool limits, timeouts, provider configs and their loading.

Every value is checked when the object is built; a bad one raises :class:`ConfigError`
naming the field and the value. API keys are held in :class:`Secret`, which never shows
its value in a repr, a log line or an error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from rag_llm.errors import ConfigError

if TYPE_CHECKING:
    from rag_llm.resilience.balancer import BalancerPolicy
    from rag_llm.resilience.breaker import BreakerPolicy
    from rag_llm.resilience.budget import BudgetPolicy
    from rag_llm.resilience.health import HealthCheckPolicy
    from rag_llm.resilience.limiter import RateLimits
    from rag_llm.resilience.retry import RetryPolicy

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_KEEPALIVE_CONNECTIONS",
    "EndpointConfig",
    "PoolLimits",
    "ProviderConfig",
    "Secret",
    "Settings",
    "Timeouts",
    "check_number",
    "read_config_file",
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
# The whole call, retries and their waits included; a stream's deadline ends at its
# first token (the stream timeouts bound the rest).
DEFAULT_DEADLINE: Final = 300.0
# At shutdown, calls in flight get this long to finish before they are cancelled.
DEFAULT_DRAIN_TIMEOUT: Final = 10.0
# A call that takes longer is logged as slow_request.
DEFAULT_SLOW_REQUEST_SECONDS: Final = 10.0
# Inputs per embeddings request: OpenAI's limit (TEI's default is 32).
DEFAULT_MAX_BATCH_SIZE: Final = 2048
# The first is the default: aiohttp for async and httpx2 for sync measured fastest
# (benchmarks/: python -m benchmarks --scenarios throughput,sync).
TRANSPORTS: Final = ("auto", "aiohttp", "httpx2", "httpx")
ENV_PREFIX: Final = "RAG_LLM_"


class Secret:
    """A string that keeps its value out of reprs, logs and error messages.

    >>> Secret("sk-abc")
    Secret('**********')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def check_number(
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float | None = None,
    integer: bool = False,
    exclusive: bool = False,
) -> float:
    """``value`` if it is a finite number in range, else ``ConfigError`` naming ``name``.

    An ``int`` comes back as the same ``int``.
    """
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(name, value, f"must be {'an integer' if integer else 'a number'}")
    number: float = value  # type: ignore[assignment]
    if not math.isfinite(number):
        raise ConfigError(name, value, "must be finite")
    if number < minimum or (exclusive and number == minimum):
        raise ConfigError(name, value, f"must be {'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None and number > maximum:
        raise ConfigError(name, value, f"must be <= {maximum:g}")
    return number


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Connection-pool limits of one provider.

    ``max_keepalive_connections`` idle connections are kept open for reuse, at most
    ``max_connections`` exist at once, and an idle one is closed after
    ``keepalive_expiry`` seconds.

    >>> PoolLimits(max_keepalive_connections=20, max_connections=100, keepalive_expiry=30.0)
    PoolLimits(max_keepalive_connections=20, max_connections=100, keepalive_expiry=30.0)
    """

    max_keepalive_connections: int = DEFAULT_MAX_KEEPALIVE_CONNECTIONS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY

    def __post_init__(self) -> None:
        check_number("max_keepalive_connections", self.max_keepalive_connections, integer=True,
                     minimum=0)
        check_number("max_connections", self.max_connections, integer=True, minimum=1)
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
            value = getattr(self, name)
            check_number(f"{name}_timeout", value, integer=False, minimum=0)
            if value == 0:
                raise ConfigError(f"{name}_timeout", value, "must be > 0")


# Flat config keys and the Python type each one takes; env values are coerced with it.
_TIMEOUT_KEYS: Final = {
    "connect_timeout": "connect",
    "read_timeout": "read",
    "write_timeout": "write",
    "pool_timeout": "pool",
    "first_token_timeout": "first_token",
    "stream_idle_timeout": "stream_idle",
}
FIELD_TYPES: Final[Mapping[str, type]] = {
    "type": str,
    "name": str,
    "model": str,
    "base_url": str,
    "api_key": str,
    "api_version": str,
    "deployment": str,
    "dimensions": int,
    "max_keepalive_connections": int,
    "max_connections": int,
    "keepalive_expiry": float,
    "connect_timeout": float,
    "read_timeout": float,
    "write_timeout": float,
    "pool_timeout": float,
    "first_token_timeout": float,
    "stream_idle_timeout": float,
    "http2": bool,
    "verify": str,
    "transport": str,
    "headers": dict,
    "slow_request_seconds": float,
    "max_batch_size": int,
    "max_batch_tokens": int,
    "coalesce_window": float,
    "adaptive_concurrency": bool,
    "endpoints": list,
    "retry": dict,
    "retry_budget": dict,
    "circuit_breaker": dict,
    "load_balancer": str,
    "health_check": dict,
    "deadline": float,
    "warmup": int,
    "drain_timeout": float,
    "requests_per_minute": float,
    "tokens_per_minute": float,
}
# Keys an entry of ``endpoints`` may set; the rest come from the provider.
ENDPOINT_KEYS: Final = ("base_url", "api_key", "name", "weight", "priority", "api_version",
                        "deployment", "requests_per_minute", "tokens_per_minute")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, value, "must be a non-empty string")
    return value


def _validate_url(name: str, value: object) -> str:
    url = _text(name, value)
    parts = urlsplit(url)
    shown = _redact_url(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(name, shown, "has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, shown, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(name, shown, "must not carry credentials; use api_key")
    if parts.query or parts.fragment:
        # A query may hold a key, and the operation path is appended after base_url.
        raise ConfigError(name, shown, "must not have a query or fragment")
    return url.rstrip("/")


def _redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: what a message may show."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme or netloc else parts.path


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One upstream a provider sends to: its URL and key, its share and its fallback tier.

    ``weight`` scales the share of calls it takes; endpoints of a higher ``priority`` number
    take calls only when those of a lower one are unhealthy. ``rate_limits`` are local,
    client-side limits for this endpoint.
    """

    name: str
    base_url: str
    api_key: Secret | None = None
    weight: int = 1
    priority: int = 0
    api_version: str | None = None
    deployment: str | None = None
    rate_limits: RateLimits | None = None

    def __repr__(self) -> str:
        return (f"EndpointConfig(name={self.name!r}, base_url={_redact_url(self.base_url)!r}, "
                f"api_key={self.api_key!r}, weight={self.weight}, priority={self.priority})")


def _default_retry() -> RetryPolicy:
    from rag_llm.resilience.retry import RetryPolicy  # the resilience package loads lazily

    return RetryPolicy()


def _default_budget() -> BudgetPolicy | None:
    from rag_llm.resilience.budget import BudgetPolicy

    return BudgetPolicy()


def _default_breaker() -> BreakerPolicy | None:
    from rag_llm.resilience.breaker import BreakerPolicy

    return BreakerPolicy()


def _default_balancer() -> BalancerPolicy:
    from rag_llm.resilience.balancer import BalancerPolicy

    return BalancerPolicy()


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Validated configuration of one provider, built from a plain mapping.

    ``base_url`` and ``api_key`` are those of the first of ``endpoints``; a config that
    names one ``base_url`` has one endpoint.

    >>> ProviderConfig.from_mapping({"type": "openai", "model": "text-embedding-3-small",
    ...                              "base_url": "http://127.0.0.1:8001/v1"}).limits
    PoolLimits(max_keepalive_connections=20, max_connections=100, keepalive_expiry=30.0)
    """

    type: str
    model: str
    base_url: str
    name: str
    api_key: Secret | None = None
    api_version: str | None = None
    deployment: str | None = None
    dimensions: int | None = None
    limits: PoolLimits = field(default_factory=PoolLimits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    http2: bool = False
    verify: bool | str = True
    transport: str = TRANSPORTS[0]
    headers: Mapping[str, str] = field(default_factory=dict)
    slow_request_seconds: float = DEFAULT_SLOW_REQUEST_SECONDS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    # None: batches are bounded by max_batch_size alone.
    max_batch_tokens: int | None = None
    coalesce_window: float | None = None
    adaptive_concurrency: bool = False
    endpoints: tuple[EndpointConfig, ...] = ()
    retry: RetryPolicy = field(default_factory=_default_retry)
    # None: retries are not capped by a budget.
    retry_budget: BudgetPolicy | None = field(default_factory=_default_budget)
    # None: no circuit breaker, no active health check.
    circuit_breaker: BreakerPolicy | None = field(default_factory=_default_breaker)
    load_balancer: BalancerPolicy = field(default_factory=_default_balancer)
    health_check: HealthCheckPolicy | None = None
    deadline: float | None = DEFAULT_DEADLINE
    warmup: int = 0
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT

    def __post_init__(self) -> None:
        if not self.endpoints:
            object.__setattr__(self, "endpoints", (EndpointConfig(
                name=_endpoint_name(self.base_url), base_url=self.base_url,
                api_key=self.api_key, api_version=self.api_version,
                deployment=self.deployment),))

    def __repr__(self) -> str:
        # Header values may hold credentials: show only their names.
        return (
            f"ProviderConfig(name={self.name!r}, type={self.type!r}, model={self.model!r}, "
            f"base_url={_redact_url(self.base_url)!r}, api_key={self.api_key!r}, "
            f"endpoints={[e.name for e in self.endpoints]!r}, "
            f"limits={self.limits!r}, timeouts={self.timeouts!r}, http2={self.http2!r}, "
            f"transport={self.transport!r}, headers={sorted(self.headers)!r})"
        )

    @classmethod
    def from_mapping(
        cls, config: Mapping[str, Any], *, default_base_url: str | None = None
    ) -> ProviderConfig:
        """Validate ``config`` (flat keys, as in the README) into a ``ProviderConfig``."""
        if not isinstance(config, Mapping):
            raise ConfigError("config", type(config).__name__, "must be a mapping")
        unknown = sorted(set(config) - set(FIELD_TYPES))
        if unknown:
            raise ConfigError(unknown[0], "<set>", f"is not a known setting; known: "
                              f"{', '.join(sorted(FIELD_TYPES))}")
        provider_type = _text("type", config.get("type"))
        if "model" not in config:
            raise ConfigError("model", None, "is required")
        model = _text("model", config["model"])
        endpoints = _endpoints(config, default_base_url, provider_type)
        limits = PoolLimits(
            max_keepalive_connections=config.get(
                "max_keepalive_connections", DEFAULT_MAX_KEEPALIVE_CONNECTIONS
            ),
            max_connections=config.get("max_connections", DEFAULT_MAX_CONNECTIONS),
            keepalive_expiry=config.get("keepalive_expiry", DEFAULT_KEEPALIVE_EXPIRY),
        )
        timeouts = Timeouts(**{
            attr: config[key] for key, attr in _TIMEOUT_KEYS.items() if key in config
        })
        first = endpoints[0]
        return cls(
            type=provider_type,
            model=model,
            base_url=first.base_url,
            name=_text("name", config.get("name", provider_type)),
            api_key=first.api_key,
            api_version=first.api_version,
            deployment=first.deployment,
            dimensions=_optional_int(config, "dimensions", minimum=1),
            limits=limits,
            timeouts=timeouts,
            http2=_flag(config, "http2", False),
            verify=_verify(config.get("verify", True)),
            transport=_choice(config, "transport", TRANSPORTS),
            headers=_headers(config.get("headers", {})),
            slow_request_seconds=check_number(
                "slow_request_seconds",
                config.get("slow_request_seconds", DEFAULT_SLOW_REQUEST_SECONDS), minimum=0),
            max_batch_size=int(check_number(
                "max_batch_size", config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
                integer=True, minimum=1)),
            max_batch_tokens=_optional_int(config, "max_batch_tokens", minimum=1),
            coalesce_window=None if config.get("coalesce_window") is None else check_number(
                "coalesce_window", config["coalesce_window"], minimum=0),
            adaptive_concurrency=_flag(config, "adaptive_concurrency", False),
            endpoints=endpoints,
            **_resilience(config, limits),
        )


def _endpoint_name(base_url: str) -> str:
    return urlsplit(base_url).netloc.rpartition("@")[2]


def _endpoints(config: Mapping[str, Any], default_base_url: str | None,
               provider_type: str) -> tuple[EndpointConfig, ...]:
    """The ``endpoints`` list, or the one endpoint that ``base_url`` and ``api_key`` make."""
    entries = config.get("endpoints")
    if entries is None:
        base_url = config.get("base_url", default_base_url)
        if base_url is None:
            raise ConfigError("base_url", None, f"is required for type {provider_type!r}")
        return (_endpoint("", {**_inherited(config), "base_url": base_url}),)
    if "base_url" in config:
        raise ConfigError("base_url", _redact_url(str(config["base_url"])),
                          "give either base_url or endpoints, not both")
    if not isinstance(entries, list | tuple) or not entries:
        raise ConfigError("endpoints", "<value>", "must be a non-empty list of mappings")
    endpoints: list[EndpointConfig] = []
    for index, entry in enumerate(entries):
        prefix = f"endpoints[{index}]."
        if not isinstance(entry, Mapping):
            raise ConfigError(prefix[:-1], type(entry).__name__, "must be a mapping")
        unknown = sorted(set(entry) - set(ENDPOINT_KEYS))
        if unknown:
            raise ConfigError(prefix + unknown[0], "<set>",
                              f"is not a known setting; known: {', '.join(ENDPOINT_KEYS)}")
        endpoints.append(_endpoint(prefix, {**_inherited(config), **entry}))
    names = [e.name for e in endpoints]
    for index, name in enumerate(names):
        if names.index(name) != index:  # the same host twice: number them apart
            endpoints[index] = replace(endpoints[index], name=f"{name}#{index}")
    return tuple(endpoints)


def _inherited(config: Mapping[str, Any]) -> dict[str, Any]:
    """Provider-level settings an endpoint takes unless it sets its own."""
    return {key: config[key] for key in ("api_key", "api_version", "deployment",
                                         "requests_per_minute", "tokens_per_minute")
            if key in config}


def _endpoint(prefix: str, entry: Mapping[str, Any]) -> EndpointConfig:
    """One endpoint; errors name the field under ``prefix`` (e.g. ``endpoints[1].``)."""
    try:
        base_url = _validate_url("base_url", entry.get("base_url"))
        api_key = entry.get("api_key")
        if api_key is not None and not isinstance(api_key, str | Secret):
            raise ConfigError("api_key", type(api_key).__name__, "must be a string")
        rate_limits = None
        if any(entry.get(key) is not None
               for key in ("requests_per_minute", "tokens_per_minute")):
            from rag_llm.resilience.limiter import RateLimits

            rate_limits = RateLimits(requests_per_minute=entry.get("requests_per_minute"),
                                     tokens_per_minute=entry.get("tokens_per_minute"))
        return EndpointConfig(
            name=_text("name", entry.get("name", _endpoint_name(base_url))),
            base_url=base_url,
            api_key=_secret(api_key),
            weight=int(check_number("weight", entry.get("weight", 1), minimum=1,
                                    integer=True)),
            priority=int(check_number("priority", entry.get("priority", 0), minimum=0,
                                      integer=True)),
            api_version=_optional_text(entry, "api_version"),
            deployment=_optional_text(entry, "deployment"),
            rate_limits=rate_limits,
        )
    except ConfigError as exc:
        if not prefix:
            raise
        raise ConfigError(prefix + exc.field, exc.value, exc.reason) from None


def _resilience(config: Mapping[str, Any], limits: PoolLimits) -> dict[str, Any]:
    """Retry, budget, breaker, balancer and health-check policies, each from its section."""
    from rag_llm.resilience.balancer import BalancerPolicy
    from rag_llm.resilience.breaker import BreakerPolicy
    from rag_llm.resilience.budget import BudgetPolicy
    from rag_llm.resilience.health import HealthCheckPolicy
    from rag_llm.resilience.retry import RetryPolicy

    balancer = config.get("load_balancer", "p2c_ewma")
    if not isinstance(balancer, str):
        raise ConfigError("load_balancer", balancer, "must be a strategy name")
    deadline = config.get("deadline", DEFAULT_DEADLINE)
    return {
        # retry: false means one attempt; retry_budget: false, no cap on retries.
        "retry": _section(config, "retry", RetryPolicy, off=RetryPolicy(max_attempts=1)),
        "retry_budget": _section(config, "retry_budget", BudgetPolicy, off=None),
        "circuit_breaker": _section(config, "circuit_breaker", BreakerPolicy, off=None),
        "load_balancer": BalancerPolicy(strategy=_BALANCER_ALIASES.get(balancer, balancer)),
        "health_check": _section(config, "health_check", HealthCheckPolicy, off=None,
                                 default=False),
        "deadline": None if deadline is None else check_number(
            "deadline", deadline, minimum=0, exclusive=True),
        "warmup": int(check_number("warmup", config.get("warmup", 0), minimum=0,
                                   maximum=limits.max_connections, integer=True)),
        "drain_timeout": check_number(
            "drain_timeout", config.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT), minimum=0),
    }


# The issue-tracker names users know from Envoy and Finagle, for the balancer's own.
_BALANCER_ALIASES: Final = {"p2c_ewma": "p2c", "least_request": "least_in_flight"}


def _section(config: Mapping[str, Any], name: str, policy: type[Any], *,
             off: Any, default: bool = True) -> Any:
    """A policy from ``config[name]``: a mapping of its fields, true (defaults) or false."""
    value = config.get(name, default)
    if value is False or value is None:
        return off
    if value is True:
        return policy()
    if not isinstance(value, Mapping):
        raise ConfigError(name, value, "must be a mapping, true or false")
    known = {f.name for f in fields(policy)} - {"classifier"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", "<set>",
                          f"is not a known setting; known: {', '.join(sorted(known))}")
    try:
        return policy(**value)
    except ConfigError as exc:
        raise ConfigError(f"{name}.{exc.field}", exc.value, exc.reason) from None


def _secret(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value) if value else None


def _optional_text(config: Mapping[str, Any], name: str) -> str | None:
    return None if config.get(name) is None else _text(name, config[name])


def _optional_int(config: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = config.get(name)
    return None if value is None else int(check_number(name, value, integer=True, minimum=minimum))


def _flag(config: Mapping[str, Any], name: str, default: bool) -> bool:
    value = config.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be true or false")
    return value


def _verify(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and Path(value).is_file():
        return value
    raise ConfigError("verify", value, "must be true, false or the path of a CA bundle file")


def _choice(config: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = config.get(name, choices[0])
    if value not in choices:
        raise ConfigError(name, value, f"must be one of {', '.join(choices)}")
    return str(value)


def _headers(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError("headers", "<mapping>", "must map header names to string values")
    return dict(value)


def _coerce_env(key: str, raw: str) -> object:
    kind = FIELD_TYPES.get(key, str)
    try:
        if kind is bool or (key == "verify" and raw.lower() in ("true", "false", "1", "0")):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(key, raw, f"must be {kind.__name__}") from None
    if kind is dict:
        raise ConfigError(key, "<env>", "cannot be set from the environment; use a config file")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Provider configs by kind (``"embedding"``, ``"llm"``) plus logging settings.

    Loaded by :meth:`load` from a TOML or YAML file, then environment variables
    (``RAG_LLM_<KIND>__<FIELD>``, e.g. ``RAG_LLM_EMBEDDING__MAX_CONNECTIONS=50``), which
    take precedence. ``OPENAI_API_KEY`` fills ``api_key`` for ``openai`` providers that set none.
    """

    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_format: str = "console"
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.log_format not in ("console", "json"):
            raise ConfigError("log_format", self.log_format, "must be 'console' or 'json'")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError("log_level", self.log_level, "must be a logging level name")

    def __repr__(self) -> str:
        return (f"Settings(providers={sorted(self.providers)!r}, "
                f"log_format={self.log_format!r}, log_level={self.log_level!r})")

    def provider(self, kind: str) -> Mapping[str, Any] | None:
        return self.providers.get(kind)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read the config file (``path`` or ``$RAG_LLM_CONFIG``), then overlay the environment."""
        env = os.environ if environ is None else environ
        file_path = path if path is not None else env.get(f"{ENV_PREFIX}CONFIG")
        data: dict[str, Any] = _read_file(Path(file_path)) if file_path else {}
        providers: dict[str, dict[str, Any]] = {
            kind: dict(values) for kind, values in data.get("providers", {}).items()
        }
        logging_section = data.get("logging", {})
        log_format = env.get(f"{ENV_PREFIX}LOG_FORMAT", logging_section.get("format", "console"))
        log_level = env.get(f"{ENV_PREFIX}LOG_LEVEL", logging_section.get("level", "info"))
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX) or "__" not in name:
                continue
            kind, _, key = name[len(ENV_PREFIX):].lower().partition("__")
            providers.setdefault(kind, {})[key] = _coerce_env(key, raw)
        openai_key = env.get("OPENAI_API_KEY")
        for values in providers.values():
            if openai_key and values.get("type") == "openai" and not values.get("api_key"):
                values["api_key"] = Secret(openai_key)
        return cls(providers=providers, log_format=log_format, log_level=log_level)


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML or YAML file at ``path``, as a mapping of its top-level tables."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config_file", str(path), f"cannot be read: {exc.strerror}") from None
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError("config_file", str(path), "must end in .toml, .yaml or .yml")
    try:
        if path.suffix == ".toml":
            import tomllib  # imported here: parsing config is off the import path

            data: object = tomllib.loads(text)
        else:
            import yaml  # imported here: only YAML users pay for it

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # TOMLDecodeError or yaml.YAMLError
        raise ConfigError("config_file", str(path), f"is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config_file", str(path), "must hold tables such as [providers]")
    return data


def _read_file(path: Path) -> dict[str, Any]:
    data = read_config_file(path)
    if not isinstance(data.get("providers", {}), dict):
        raise ConfigError("config_file", str(path), "must hold a 'providers' table")
    return data
