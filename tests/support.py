"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from rag_llm.testing import UpstreamServer

API_KEY = "sk-test-0123456789abcdef"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def provider_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": "openai",
        "base_url": server.base_url,
        "api_key": API_KEY,
        "model": "text-embedding-3-small",
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
