"""``ProviderConfig`` and ``EndpointConfig``: one provider's settings, checked when built.

The constructors validate every field, so a config made in code is held to the same rules
as one read from a mapping, a file or the environment: :meth:`ProviderConfig.from_mapping`
only turns the flat keys of the README into constructor arguments.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from rag_llm.config._limits import PoolLimits, Timeouts
from rag_llm.config._secret import Secret
from rag_llm.config._state import ON_STATE_ERROR, StateConfig, state_config
from rag_llm.errors import ConfigError
from rag_llm.validation import (
    check_number,
    check_text,
    check_url,
    redact_bad_url,
    redact_url,
    refuse_unknown,
)

if TYPE_CHECKING:
    from rag_llm.resilience.balancer import BalancerPolicy
    from rag_llm.resilience.breaker import BreakerPolicy
    from rag_llm.resilience.budget import BudgetPolicy
    from rag_llm.resilience.health import HealthCheckPolicy
    from rag_llm.resilience.limiter import RateLimits
    from rag_llm.resilience.retry import RetryPolicy

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_STATE_SYNC_INTERVAL",
    "ENDPOINT_KEYS",
    "FIELD_TYPES",
    "TRANSPORTS",
    "EndpointConfig",
    "ProviderConfig",
]

# The whole call, retries and their waits included; a stream's deadline ends at its
# first token (the stream timeouts bound the rest).
DEFAULT_DEADLINE: Final = 300.0
# At shutdown, calls in flight get this long to finish before they are cancelled.
DEFAULT_DRAIN_TIMEOUT: Final = 10.0
# A call that takes longer is logged as slow_request.
DEFAULT_SLOW_REQUEST_SECONDS: Final = 10.0
# The most bytes of one answer read into memory: past it the call fails instead of
# buffering without bound. Twice the largest real answer, 2,048 vectors of 3,072 floats
# (about 126 MB as JSON).
DEFAULT_MAX_RESPONSE_BYTES: Final = 256 * 1024 * 1024
# Inputs per embeddings request: OpenAI's limit (TEI's default is 32).
DEFAULT_MAX_BATCH_SIZE: Final = 2048
# A lease on a slot of global_max_in_flight lapses this long after its holder last renewed it.
DEFAULT_LEASE_TTL: Final = 30.0
# With a Redis, each process reads the endpoints' shared breaker and health verdicts at most
# this often, so a breaker opened in one process is seen by all within it.
DEFAULT_STATE_SYNC_INTERVAL: Final = 1.0
# The first is the default: aiohttp for async and httpx2 for sync measured fastest
# (benchmarks/: python -m benchmarks --scenarios throughput,sync).
TRANSPORTS: Final = ("auto", "aiohttp", "httpx2", "httpx", "pyreqwest")
# Transports on an optional package: the extra that installs it.
_TRANSPORT_EXTRAS: Final = {"pyreqwest": ("pyreqwest", "native")}

_TIMEOUT_KEYS: Final = {
    "connect_timeout": "connect",
    "read_timeout": "read",
    "write_timeout": "write",
    "pool_timeout": "pool",
    "first_token_timeout": "first_token",
    "stream_idle_timeout": "stream_idle",
}
# Flat config keys and the Python type each one takes; env values are coerced with it.
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
    **dict.fromkeys(_TIMEOUT_KEYS, float),
    "http2": bool,
    "verify": str,
    "transport": str,
    "headers": dict,
    "slow_request_seconds": float,
    "max_response_bytes": int,
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
    "burst": float,
    "token_burst": float,
    "state": str,
    "global_max_in_flight": int,
    "lease_ttl": float,
    "on_state_error": str,
    "expected_instances": int,
    "state_sync_interval": float,
}
# Keys an entry of ``endpoints`` may set; the rest come from the provider.
ENDPOINT_KEYS: Final = ("base_url", "api_key", "name", "weight", "priority", "api_version",
                        "deployment", "requests_per_minute", "tokens_per_minute", "burst",
                        "token_burst")
# Provider-level settings an endpoint takes unless it sets its own.
_INHERITED: Final = ("api_key", "api_version", "deployment", "requests_per_minute",
                     "tokens_per_minute", "burst", "token_burst")
# What an API key and a configured header value may hold: what an HTTP header carries.
_KEY_TEXT: Final = re.compile(r"[\x21-\x7e]*")
_HEADER_TEXT: Final = re.compile(r"[\t\x20-\x7e]*")
# The names users know from Envoy and Finagle, for the balancer's own.
_BALANCER_ALIASES: Final = {"p2c_ewma": "p2c", "least_request": "least_in_flight"}


def _optional_text(name: str, value: object) -> str | None:
    return None if value is None else check_text(name, value)


def _optional_int(name: str, value: object, *, minimum: int) -> int | None:
    return None if value is None else int(check_number(name, value, integer=True,
                                                       minimum=minimum))


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be true or false")
    return value


def _secret(name: str, value: object) -> Secret | None:
    if value is None:
        return None
    if isinstance(value, Secret):
        text = value.get_secret_value()
    elif isinstance(value, str):
        text = value
    else:
        raise ConfigError(name, type(value).__name__, "must be a string")
    # A key goes into a header: a newline or other byte outside visible ASCII would fail
    # every call with an error quoting the header, key and all. Never shown here either.
    if not _KEY_TEXT.fullmatch(text):
        raise ConfigError(name, ConfigError.UNSHOWN,
                          "may hold only visible ASCII characters, no spaces or line breaks "
                          "(a trailing newline from a key file?)")
    return value if isinstance(value, Secret) else Secret(value) if value else None


def _instance(name: str, value: object, kind: type, *, optional: bool = False) -> None:
    if not (isinstance(value, kind) or (optional and value is None)):
        raise ConfigError(name, type(value).__name__, f"must be a {kind.__name__}"
                          f"{' or None' if optional else ''}")


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def endpoint_name(base_url: str) -> str:
    """The name an endpoint goes by unless it is given one: its host and port."""
    return urlsplit(base_url).netloc.rpartition("@")[2]


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

    def __post_init__(self) -> None:
        _set(self, "base_url", check_url("base_url", self.base_url))
        check_text("name", self.name)
        _set(self, "api_key", _secret("api_key", self.api_key))
        check_number("weight", self.weight, minimum=1, integer=True)
        check_number("priority", self.priority, minimum=0, integer=True)
        _optional_text("api_version", self.api_version)
        _optional_text("deployment", self.deployment)
        if self.rate_limits is not None:
            from rag_llm.resilience.limiter import RateLimits

            _instance("rate_limits", self.rate_limits, RateLimits)

    def __repr__(self) -> str:
        return (f"EndpointConfig(name={self.name!r}, base_url={redact_url(self.base_url)!r}, "
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
    """Validated configuration of one provider; every field is checked when it is built.

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
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
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
    # None: limits live in this process. With a Redis, rate limits and
    # global_max_in_flight hold across every process that points at it.
    state: StateConfig | None = None
    # Requests in flight to each endpoint, across processes (None: no such cap).
    global_max_in_flight: int | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL
    # When the shared state fails: "local" limits (divided by expected_instances) or "fail".
    on_state_error: str = ON_STATE_ERROR[0]
    expected_instances: int = 1
    state_sync_interval: float = DEFAULT_STATE_SYNC_INTERVAL

    def __post_init__(self) -> None:
        for name in ("type", "model", "name"):
            check_text(name, getattr(self, name))
        _set(self, "base_url", check_url("base_url", self.base_url))
        _set(self, "api_key", _secret("api_key", self.api_key))
        _optional_text("api_version", self.api_version)
        _optional_text("deployment", self.deployment)
        _optional_int("dimensions", self.dimensions, minimum=1)
        _instance("limits", self.limits, PoolLimits)
        _instance("timeouts", self.timeouts, Timeouts)
        _flag("http2", self.http2)
        _set(self, "verify", _verify(self.verify))
        if self.transport not in TRANSPORTS:
            raise ConfigError("transport", self.transport,
                              f"must be one of {', '.join(TRANSPORTS)}")
        _installed("transport", self.transport)
        _set(self, "headers", _headers(self.headers))
        check_number("slow_request_seconds", self.slow_request_seconds, minimum=0)
        check_number("max_response_bytes", self.max_response_bytes, integer=True, minimum=1)
        check_number("max_batch_size", self.max_batch_size, integer=True, minimum=1)
        _optional_int("max_batch_tokens", self.max_batch_tokens, minimum=1)
        if self.coalesce_window is not None:
            check_number("coalesce_window", self.coalesce_window, minimum=0)
        _flag("adaptive_concurrency", self.adaptive_concurrency)
        if self.deadline is not None:
            check_number("deadline", self.deadline, minimum=0, exclusive=True)
        check_number("warmup", self.warmup, minimum=0, maximum=self.limits.max_connections,
                     integer=True)
        check_number("drain_timeout", self.drain_timeout, minimum=0)
        self._check_state()
        self._check_policies()
        if not self.endpoints:
            _set(self, "endpoints", (EndpointConfig(
                name=endpoint_name(self.base_url), base_url=self.base_url,
                api_key=self.api_key, api_version=self.api_version,
                deployment=self.deployment),))
        elif not isinstance(self.endpoints, tuple) or not all(
                isinstance(e, EndpointConfig) for e in self.endpoints):
            raise ConfigError("endpoints", type(self.endpoints).__name__,
                              "must be a tuple of EndpointConfig")

    def _check_state(self) -> None:
        _set(self, "state", state_config(self.state))
        _optional_int("global_max_in_flight", self.global_max_in_flight, minimum=1)
        check_number("lease_ttl", self.lease_ttl, minimum=0.1)
        if self.on_state_error not in ON_STATE_ERROR:
            raise ConfigError("on_state_error", self.on_state_error,
                              f"must be one of {', '.join(ON_STATE_ERROR)}")
        check_number("expected_instances", self.expected_instances, minimum=1, integer=True)
        check_number("state_sync_interval", self.state_sync_interval, minimum=0.01)

    def _check_policies(self) -> None:
        from rag_llm.resilience.balancer import BalancerPolicy
        from rag_llm.resilience.breaker import BreakerPolicy
        from rag_llm.resilience.budget import BudgetPolicy
        from rag_llm.resilience.health import HealthCheckPolicy
        from rag_llm.resilience.retry import RetryPolicy

        _instance("retry", self.retry, RetryPolicy)
        _instance("retry_budget", self.retry_budget, BudgetPolicy, optional=True)
        _instance("circuit_breaker", self.circuit_breaker, BreakerPolicy, optional=True)
        _instance("load_balancer", self.load_balancer, BalancerPolicy)
        _instance("health_check", self.health_check, HealthCheckPolicy, optional=True)

    def __repr__(self) -> str:
        # Header values may hold credentials: show only their names.
        return (
            f"ProviderConfig(name={self.name!r}, type={self.type!r}, model={self.model!r}, "
            f"base_url={redact_url(self.base_url)!r}, api_key={self.api_key!r}, "
            f"endpoints={[e.name for e in self.endpoints]!r}, "
            f"limits={self.limits!r}, timeouts={self.timeouts!r}, http2={self.http2!r}, "
            f"transport={self.transport!r}, headers={sorted(self.headers)!r}, "
            f"state={self.state!r})"
        )

    @classmethod
    def from_mapping(
        cls, config: Mapping[str, Any], *, default_base_url: str | None = None
    ) -> ProviderConfig:
        """Validate ``config`` (flat keys, as in the README) into a ``ProviderConfig``."""
        if not isinstance(config, Mapping):
            raise ConfigError("config", type(config).__name__, "must be a mapping")
        refuse_unknown(config, FIELD_TYPES)
        provider_type = check_text("type", config.get("type"))
        if "model" not in config:
            raise ConfigError("model", None, "is required")
        endpoints = _endpoints(config, default_base_url, provider_type)
        first = endpoints[0]
        limits = PoolLimits(**{key: config[key] for key in (
            "max_keepalive_connections", "max_connections", "keepalive_expiry")
            if key in config})
        timeouts = Timeouts(**{attr: config[key] for key, attr in _TIMEOUT_KEYS.items()
                               if key in config})
        plain = {key: config[key] for key in (
            "dimensions", "http2", "verify", "transport", "headers", "slow_request_seconds",
            "max_response_bytes", "max_batch_size", "max_batch_tokens", "coalesce_window",
            "adaptive_concurrency", "warmup", "drain_timeout", "deadline", "global_max_in_flight",
            "lease_ttl", "on_state_error", "expected_instances",
            "state_sync_interval") if key in config}
        if "state" in config:
            plain["state"] = state_config(config["state"])
        return cls(
            type=provider_type,
            model=config["model"],
            base_url=first.base_url,
            name=config.get("name", provider_type),
            api_key=first.api_key,
            api_version=first.api_version,
            deployment=first.deployment,
            limits=limits,
            timeouts=timeouts,
            endpoints=endpoints,
            **plain,
            **_policies(config),
        )


def _endpoints(config: Mapping[str, Any], default_base_url: str | None,
               provider_type: str) -> tuple[EndpointConfig, ...]:
    """The ``endpoints`` list, or the one endpoint that ``base_url`` and ``api_key`` make."""
    entries = config.get("endpoints")
    inherited = {key: config[key] for key in _INHERITED if key in config}
    if entries is None:
        base_url = config.get("base_url", default_base_url)
        if base_url is None:
            raise ConfigError("base_url", None, f"is required for type {provider_type!r}")
        return (_endpoint("", {**inherited, "base_url": base_url}),)
    if "base_url" in config:
        raise ConfigError("base_url", redact_bad_url(str(config["base_url"])),
                          "give either base_url or endpoints, not both")
    if not isinstance(entries, list | tuple) or not entries:
        raise ConfigError("endpoints", "<value>", "must be a non-empty list of mappings")
    endpoints: list[EndpointConfig] = []
    for index, entry in enumerate(entries):
        prefix = f"endpoints[{index}]."
        if not isinstance(entry, Mapping):
            raise ConfigError(prefix[:-1], type(entry).__name__, "must be a mapping")
        try:
            refuse_unknown(entry, ENDPOINT_KEYS)
        except ConfigError as exc:
            raise exc.within(prefix) from None
        endpoints.append(_endpoint(prefix, {**inherited, **entry}))
    names = [e.name for e in endpoints]
    for index, name in enumerate(names):
        if names.index(name) != index:  # the same host twice: number them apart
            endpoints[index] = replace(endpoints[index], name=f"{name}#{index}")
    return tuple(endpoints)


def _endpoint(prefix: str, entry: Mapping[str, Any]) -> EndpointConfig:
    """One endpoint; errors name the field under ``prefix`` (e.g. ``endpoints[1].``)."""
    try:
        base_url = check_url("base_url", entry.get("base_url"))
        rate_limits = None
        if any(entry.get(key) is not None
               for key in ("requests_per_minute", "tokens_per_minute")):
            from rag_llm.resilience.limiter import RateLimits

            rate_limits = RateLimits(requests_per_minute=entry.get("requests_per_minute"),
                                     tokens_per_minute=entry.get("tokens_per_minute"),
                                     burst=entry.get("burst"),
                                     token_burst=entry.get("token_burst"))
        return EndpointConfig(
            name=entry.get("name", endpoint_name(base_url)),
            base_url=base_url,
            api_key=entry.get("api_key"),
            weight=entry.get("weight", 1),
            priority=entry.get("priority", 0),
            api_version=entry.get("api_version"),
            deployment=entry.get("deployment"),
            rate_limits=rate_limits,
        )
    except ConfigError as exc:
        raise exc.within(prefix) from None


def _policies(config: Mapping[str, Any]) -> dict[str, Any]:
    """Retry, budget, breaker, balancer and health-check policies, each from its section."""
    from rag_llm.resilience.balancer import BalancerPolicy
    from rag_llm.resilience.breaker import BreakerPolicy
    from rag_llm.resilience.budget import BudgetPolicy
    from rag_llm.resilience.health import HealthCheckPolicy
    from rag_llm.resilience.retry import RetryPolicy

    balancer = config.get("load_balancer", "p2c_ewma")
    if not isinstance(balancer, str):
        raise ConfigError("load_balancer", balancer, "must be a strategy name")
    return {
        # retry: false means one attempt; retry_budget: false, no cap on retries.
        "retry": _section(config, "retry", RetryPolicy, off=RetryPolicy(max_attempts=1)),
        "retry_budget": _section(config, "retry_budget", BudgetPolicy, off=None),
        "circuit_breaker": _section(config, "circuit_breaker", BreakerPolicy, off=None),
        "load_balancer": BalancerPolicy(strategy=_BALANCER_ALIASES.get(balancer, balancer)),
        "health_check": _section(config, "health_check", HealthCheckPolicy, off=None,
                                 default=False),
    }


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
    try:
        refuse_unknown(value, {f.name for f in fields(policy)} - {"classifier"})
        return policy(**value)
    except ConfigError as exc:
        raise exc.within(f"{name}.") from None


def _verify(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and Path(value).is_file():
        return value
    raise ConfigError("verify", value, "must be true, false or the path of a CA bundle file")


def _headers(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError("headers", "<mapping>", "must map header names to string values")
    for name, text in value.items():
        # The value may be a credential: name the header, never show the value.
        if not _HEADER_TEXT.fullmatch(text):
            raise ConfigError(f"headers.{name}", ConfigError.UNSHOWN,
                              "may hold only printable ASCII characters, no line breaks")
    return dict(value)


def _installed(field: str, transport: str) -> None:
    """A transport on an optional package needs it installed: say which extra brings it."""
    package, extra = _TRANSPORT_EXTRAS.get(transport, (None, None))
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(field, transport, f"needs the '{package}' package: "
                          f"pip install 'rag-llm[{extra}]'")
