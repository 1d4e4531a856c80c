"""Helpers shared by the tests: keys, config builders, a bad-config table, polling."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from rag_llm import errors
from rag_llm.testing import UpstreamServer

KEY = "sk-test-SECRET-0123456789abcdef"
# An Azure-style key: no "sk-" prefix, so only exact-value redaction can hide it.
AZURE_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
DROP = object()  # an override that removes the key from the base config
# The native transport is an optional extra: its runs of a parametrised suite skip without it.
PYREQWEST = pytest.param("pyreqwest", marks=pytest.mark.skipif(
    importlib.util.find_spec("pyreqwest") is None,
    reason="pyreqwest is not installed: pip install 'rag-llm[native]'"))


def config(**overrides: Any) -> dict[str, Any]:
    """A valid openai embedding config carrying KEY, with ``overrides`` applied."""
    base: dict[str, Any] = {
        "type": "openai",
        "model": "text-embedding-3-small",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": KEY,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_rag_error(exc: BaseException) -> None:
    """``exc`` belongs to rag-llm's tree, not to httpx/httpcore."""
    assert isinstance(exc, errors.RagLLMError)
    assert type(exc).__module__ == "rag_llm.errors"


# (id, kind, config, expected .field, text the message must show)
BAD_CONFIGS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("negative-max-connections", "embedding", config(max_connections=-5),
     "max_connections", "-5"),
    ("zero-max-connections", "embedding", config(max_connections=0), "max_connections", "0"),
    ("negative-max-keepalive", "embedding", config(max_keepalive_connections=-1),
     "max_keepalive_connections", "-1"),
    ("negative-keepalive-expiry", "embedding", config(keepalive_expiry=-1.5),
     "keepalive_expiry", "-1.5"),
    ("keepalive-above-max", "embedding",
     config(max_keepalive_connections=50, max_connections=10),
     "max_keepalive_connections", "50"),
    ("max-connections-str", "embedding", config(max_connections="ten"),
     "max_connections", "'ten'"),
    ("max-connections-float", "embedding", config(max_connections=1.5),
     "max_connections", "1.5"),
    ("max-connections-bool", "embedding", config(max_connections=True),
     "max_connections", "True"),
    ("unknown-type", "embedding", config(type="openia"), "type", "'openia'"),
    ("missing-model", "llm", config(model=DROP), "model", "required"),
    ("base-url-not-url", "embedding", config(base_url="not a url"), "base_url", "'not a url'"),
    ("base-url-ftp", "embedding", config(base_url="ftp://x"), "base_url", "ftp://x"),
    ("base-url-no-host", "embedding", config(base_url="http://"), "base_url", "http://"),
    ("base-url-bad-port", "embedding", config(base_url="http://host:99999"),
     "base_url", "http://host:99999"),
    ("unknown-key", "embedding", config(max_conections=10), "max_conections",
     "max_conections"),
    ("unknown-kind", "embeddings", config(), "kind", "'embeddings'"),
    ("azure-without-api-version", "embedding",
     config(type="azure", base_url="https://example.openai.azure.com"), "api_version",
     "api_version"),
    ("verify-missing-file", "embedding", config(verify="/nonexistent/ca-bundle.pem"),
     "verify", "/nonexistent/ca-bundle.pem"),
]



def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def provider_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    """A provider on ``server`` that sends each call once: the pool's own behaviour, with
    no retries or breaker in the way (``tests/resilience`` covers those)."""
    config: dict[str, Any] = {
        "type": "openai",
        "base_url": server.base_url,
        "api_key": KEY,
        "model": "text-embedding-3-small",
        "retry": False,
        "circuit_breaker": False,
    }
    if server.ca_cert_path is not None:
        config["verify"] = server.ca_cert_path
    config.update(overrides)
    return config


async def eventually(predicate: Callable[[], bool], within: float = 3.0) -> bool:
    """Poll ``predicate`` while the event loop keeps running (pool reapers run on it)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def embed_concurrently(provider: Any, calls: int, concurrency: int) -> int:
    """Make ``calls`` one-text ``aembed`` calls from ``concurrency`` workers; how many returned.

    Each call must return exactly one vector.
    """
    remaining = iter(range(calls))
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in remaining:
            assert len(await provider.aembed([f"text {i}"])) == 1
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done
