"""What shared state costs in round trips, counted at a real redis-server: at most one
command per call (rate limits and lease in one script, batched across an event loop's
calls, releases riding on later admissions), and every lease given back.

Commands are counted with MONITOR, which tells a client's commands from a script's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from statekit import Monitor, RedisServer, SlowProxy

from rag_llm import create_provider
from rag_llm.testing import UpstreamServer

NEVER_BINDING = {"global_max_in_flight": 100_000, "requests_per_minute": 1e9}


def _provider(server: UpstreamServer, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "openai_compatible", "model": "m", "name": "trips",
            "endpoints": [{"base_url": server.base_url, "name": "ep"}],
            "state": {"timeout": 1.0, **state}, "retry": False, **extra}


def _sent(seen: Monitor) -> list[str]:
    """The provider's commands (the test's own reads left out)."""
    return [name for name in seen.commands() if name not in ("ZCARD", "INFO", "EXISTS")]


def _leases(redis: RedisServer, prefix: str) -> int:
    reply = redis.command("ZCARD", f"{prefix}:{{trips/ep}}:in_flight")
    return int(reply.strip()[1:])


def _wait_for_no_leases(redis: RedisServer, prefix: str, within: float = 2.0) -> float:
    started = time.monotonic()
    while _leases(redis, prefix) and time.monotonic() - started < within:
        time.sleep(0.005)
    assert _leases(redis, prefix) == 0, "a lease was never given back"
    return time.monotonic() - started


def _lease_counts(redis: RedisServer, prefix: str, seconds: float) -> list[int]:
    """The number of leases held, read every few milliseconds for ``seconds``."""
    counts: list[int] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        count = _leases(redis, prefix)
        if not counts or counts[-1] != count:
            counts.append(count)
        time.sleep(0.003)
    return counts


@pytest.mark.parametrize("limits", [NEVER_BINDING, {"global_max_in_flight": 100_000}],
                         ids=["rate-and-lease", "lease-only"])
async def test_async_calls_cost_at_most_one_command_each(
        redis_server: RedisServer, prefix: str, limits: dict[str, Any]) -> None:
    calls, tasks = 400, 16
    with UpstreamServer() as upstream:
        config = _provider(upstream, {"url": redis_server.url, "prefix": prefix}, **limits)
        async with create_provider("embedding", config) as provider:
            await provider.aembed("warm")  # loads the script
            _wait_for_no_leases(redis_server, prefix)

            async def caller() -> None:
                for _ in range(calls // tasks):
                    await provider.aembed("x")

            with Monitor(redis_server.port) as seen:
                await asyncio.gather(*(caller() for _ in range(tasks)))
                settled = _wait_for_no_leases(redis_server, prefix)
            sent = _sent(seen)
    assert len(upstream.requests) >= calls + 1
    # One command per call at most (batching makes it fewer under concurrency), and
    # releases ride on admissions: few go out on their own.
    assert len(sent) <= calls, len(sent)
    assert set(sent) <= {"EVALSHA", "ZREM"}, set(sent)
    assert sent.count("ZREM") <= calls // 10, sent.count("ZREM")
    assert settled < 0.5, settled  # the last releases go out within the flush delay


def test_sync_calls_cost_at_most_one_command_each(redis_server: RedisServer,
                                                  prefix: str) -> None:
    calls, threads = 200, 4
    with UpstreamServer() as upstream:
        config = _provider(upstream, {"url": redis_server.url, "prefix": prefix},
                           **NEVER_BINDING)
        with create_provider("embedding", config) as provider:
            provider.embed("warm")
            _wait_for_no_leases(redis_server, prefix)

            def caller() -> None:
                for _ in range(calls // threads):
                    provider.embed("x")

            workers = [threading.Thread(target=caller) for _ in range(threads)]
            with Monitor(redis_server.port) as seen:
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                _wait_for_no_leases(redis_server, prefix)
            sent = _sent(seen)
    assert len(sent) <= calls + calls // 10, len(sent)
    assert sent.count("EVALSHA") == calls, sent.count("EVALSHA")


async def test_a_call_cancelled_during_its_admission_gives_its_lease_back(
        redis_server: RedisServer, prefix: str) -> None:
    proxy = SlowProxy(redis_server.port, delay=0.1)  # each trip takes 0.2 s
    try:
        with UpstreamServer() as upstream:
            config = _provider(upstream, {"url": proxy.url, "prefix": prefix},
                               **NEVER_BINDING)
            async with create_provider("embedding", config) as provider:
                await provider.aembed("warm")
                _wait_for_no_leases(redis_server, prefix, within=3.0)
                seen = len(upstream.requests)
                call = asyncio.ensure_future(provider.aembed("x"))
                await asyncio.sleep(0.05)  # its admission is on the wire
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                # The trip still lands and takes the lease: then it must be given back.
                counts = await asyncio.to_thread(_lease_counts, redis_server, prefix, 1.5)
                assert 1 in counts, counts
                assert counts[-1] == 0, counts
                assert len(upstream.requests) == seen  # the cancelled call never went out
    finally:
        proxy.close()


async def test_admission_loads_its_script_again_after_a_flush(redis_server: RedisServer,
                                                              prefix: str) -> None:
    # Admission keeps connections of its own and sends the script by its hash: a server
    # that forgot the script (restarted, SCRIPT FLUSH) is handed it again once, in the same
    # trip, and no call sees an error or falls back to local limits.
    from rag_llm.state import counted_state

    def troubles() -> tuple[int, int]:  # counted per provider name, over the process
        (reading,) = [r for r in counted_state() if r.provider == "trips"]
        return reading.errors, reading.fallbacks

    with UpstreamServer() as upstream:
        config = _provider(upstream, {"url": redis_server.url, "prefix": prefix},
                           **NEVER_BINDING)
        async with create_provider("embedding", config) as provider:
            await provider.aembed("warm")
            before = troubles()
            redis_server.command("SCRIPT", "FLUSH")
            with Monitor(redis_server.port) as seen:
                for _ in range(20):
                    await provider.aembed("x")
                _wait_for_no_leases(redis_server, prefix)
            sent = _sent(seen)
            after = troubles()
    assert sent.count("SCRIPT") == 1, sent
    # The first EVALSHA is refused (NOSCRIPT) and sent again after the load.
    assert sent.count("EVALSHA") == 21, sent
    assert after == before
    assert len(upstream.requests) == 21
