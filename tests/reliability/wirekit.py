"""What the reliability scenarios share: the key, a fast retry, a question and its echo,
the provider settings they start from, and a count of the process's sockets to a port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEY = "sk-reliability-0123456789"
FAST_RETRY = {"max_attempts": 3, "base_delay": 0.001, "max_delay": 0.005}
QUESTION = [{"role": "user", "content": "one two three four five six seven"}]
ANSWER = "echo: one two three four five six seven"


def settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    """An OpenAI provider on ``base_url`` with a fast retry, then ``overrides``."""
    return {"type": "openai", "model": "m", "api_key": KEY, "base_url": base_url,
            "retry": FAST_RETRY, **overrides}


def sockets_to(port: int) -> int:
    """This process's descriptors on a TCP connection to 127.0.0.1:``port`` (Linux)."""
    inodes = set()
    with Path("/proc/net/tcp").open() as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") in inodes
    return count


async def until(predicate: Callable[[], bool], within: float = 2.0) -> bool:
    """Whether ``predicate`` came true within ``within`` seconds, polled every 5 ms."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True
