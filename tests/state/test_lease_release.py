"""A lease's release rides on the next acquire: one Redis step per call, seen at the server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from statekit import RedisServer

from rag_llm import create_provider
from rag_llm.calls.shared import RELEASE_DELAY
from rag_llm.testing import UpstreamServer


def _config(server: UpstreamServer, redis: RedisServer, prefix: str,
            **extra: Any) -> dict[str, Any]:
    return {"type": "openai_compatible", "model": "m", "base_url": server.base_url,
            "state": {"url": redis.url, "prefix": prefix, "timeout": 1.0},
            "global_max_in_flight": 2, "retry": False, **extra}


class Monitor:
    """Redis's MONITOR feed, read in a thread: each command the server runs, and whether
    a script ran it (``[0 lua]``) or a client sent it."""

    def __init__(self, redis: RedisServer) -> None:
        self.lines: list[str] = []
        self._sock = socket.create_connection(("127.0.0.1", redis.port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        assert self._sock.recv(5) == b"+OK\r\n"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            *done, buffer = buffer.split(b"\r\n")
            self.lines.extend(line.decode(errors="replace") for line in done)

    def sent(self, command: str, key_part: str) -> int:
        """Commands ``command`` a client sent (not a script) that name ``key_part``."""
        return sum(1 for line in self.lines if f'] "{command}"' in line
                   and "lua]" not in line and key_part in line)

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)


def test_a_busy_process_pays_one_redis_step_per_call_for_its_lease(
        upstream: UpstreamServer, redis_server: RedisServer, prefix: str) -> None:
    monitor = Monitor(redis_server)

    async def calls() -> None:
        async with create_provider("embedding", _config(upstream, redis_server, prefix)) as p:
            for _ in range(30):
                await p.aembed(["x"])

    try:
        asyncio.run(calls())
        time.sleep(0.2)
    finally:
        monitor.close()
    acquires = monitor.sent("EVALSHA", ":in_flight")
    # One acquire per call, each removing the lease before it; the client's first EVALSHA
    # is refused (NOSCRIPT) and sent again once the script is loaded.
    assert acquires in (30, 31)
    assert monitor.sent("ZREM", ":in_flight") <= 1  # at most the last, at close


def test_an_idle_process_gives_its_lease_back_within_the_release_delay(
        upstream: UpstreamServer, redis_server: RedisServer, prefix: str) -> None:
    config = _config(upstream, redis_server, prefix, global_max_in_flight=1, pool_timeout=0.2)

    async def run() -> float:
        async with create_provider("embedding", config) as first, \
                create_provider("embedding", config) as second:
            await first.aembed(["x"])
            freed = time.monotonic()
            await second.aembed(["y"])  # the one slot, freed by first's flush
            return time.monotonic() - freed

    waited = asyncio.run(run())
    assert waited < RELEASE_DELAY + 0.15
    # Closing removed what was left: the empty sorted set is gone.
    assert b"in_flight" not in redis_server.command("KEYS", f"{prefix}*")
