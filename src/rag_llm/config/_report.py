"""The effective configuration as ``rag-llm config check`` prints it: every key, secrets
masked, each with where its value came from (default, file or environment)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Final

from rag_llm.config._provider import ProviderConfig
from rag_llm.config._secret import Secret
from rag_llm.validation import redact_url

__all__ = ["MASK", "Entry", "provider_entries", "render"]

MASK: Final = "**********"
# Sources line up here; a longer line puts its source right after it.
_SOURCE_COLUMN: Final = 44
# One line of the report: key, value as built, where it came from.
Entry = tuple[str, object, str]


def _policy(policy: object) -> object:
    """A policy dataclass as the mapping a config file would give, or false when off."""
    if policy is None:
        return False
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)  # type: ignore[arg-type]
            if f.name != "classifier"}


def provider_entries(config: ProviderConfig) -> dict[str, object]:
    """``config`` as the flat keys of the README, with secrets masked."""
    limits, timeouts = config.limits, config.timeouts
    first = config.endpoints[0]
    rate = first.rate_limits
    values: dict[str, object] = {
        "type": config.type, "name": config.name, "model": config.model,
        "base_url": redact_url(config.base_url), "api_key": config.api_key,
        "api_version": config.api_version, "deployment": config.deployment,
        "dimensions": config.dimensions,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "max_connections": limits.max_connections, "keepalive_expiry": limits.keepalive_expiry,
        **{f"{f.name}_timeout": getattr(timeouts, f.name)
           for f in dataclasses.fields(timeouts)},
        "http2": config.http2, "verify": config.verify, "transport": config.transport,
        "headers": dict.fromkeys(config.headers, MASK),
        "slow_request_seconds": config.slow_request_seconds,
        "max_response_bytes": config.max_response_bytes,
        "max_batch_size": config.max_batch_size, "max_batch_tokens": config.max_batch_tokens,
        "coalesce_window": config.coalesce_window,
        "adaptive_concurrency": config.adaptive_concurrency,
        "retry": _policy(config.retry), "retry_budget": _policy(config.retry_budget),
        "circuit_breaker": _policy(config.circuit_breaker),
        "load_balancer": config.load_balancer.strategy,
        "health_check": _policy(config.health_check),
        "deadline": config.deadline, "warmup": config.warmup,
        "drain_timeout": config.drain_timeout,
        "requests_per_minute": rate.requests_per_minute if rate else None,
        "tokens_per_minute": rate.tokens_per_minute if rate else None,
        "burst": rate.capacity("requests") if rate else None,
        "token_burst": rate.capacity("tokens") if rate else None,
        # The URL without its password.
        "state": "memory" if config.state is None else {
            "url": config.state.shown_url, "prefix": config.state.prefix,
            "timeout": config.state.timeout},
        "global_max_in_flight": config.global_max_in_flight,
        "lease_ttl": config.lease_ttl,
        "on_state_error": config.on_state_error,
        "expected_instances": config.expected_instances,
        "state_sync_interval": config.state_sync_interval,
    }
    if len(config.endpoints) > 1:
        values["endpoints"] = [
            {"name": e.name, "base_url": redact_url(e.base_url), "api_key": e.api_key,
             "weight": e.weight, "priority": e.priority} for e in config.endpoints]
        del values["base_url"]
    return values


def _shown(value: object) -> str:
    """``value`` in TOML's notation (inline tables and arrays), secrets masked."""
    if isinstance(value, Secret):
        return json.dumps(MASK)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{key} = {_shown(item)}" for key, item in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, set | frozenset):
        value = sorted(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    return json.dumps(str(value))


def render(tables: Sequence[tuple[str, Sequence[Entry]]]) -> str:
    """The report: a TOML-like table per section, each line ending in its value's source."""
    lines: list[str] = []
    for title, entries in tables:
        if lines:
            lines.append("")
        lines.append(f"[{title}]")
        rows = [(f"{key} = {_shown(value)}", source) for key, value, source in entries]
        width = min(max((len(text) for text, _ in rows), default=0), _SOURCE_COLUMN)
        lines.extend(f"{text.ljust(width)}  # {source}" for text, source in rows)
    return "\n".join(lines) + "\n"

