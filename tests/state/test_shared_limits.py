"""Limits shared by real processes through a real redis-server, against a real upstream."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from statekit import RedisServer, Workers

from rag_llm.testing import UpstreamServer

WORKER = Path(__file__).with_name("worker.py")


def _provider(server: UpstreamServer, redis: RedisServer, prefix: str,
              **extra: Any) -> dict[str, Any]:
    # A generous Redis timeout: the tests share two loaded cores; the fallback has its own.
    return {"type": "openai_compatible", "model": "m", "name": "emb",
            "endpoints": [{"base_url": server.base_url, "name": "shared"}],
            "state": {"url": redis.url, "prefix": prefix, "timeout": 1.0},
            "pool_timeout": 60, "retry": False, "circuit_breaker": False, **extra}


def _all_ready(workers: Workers) -> None:
    for ready in workers.wait_ready():
        assert ready == {"ready": True}, ready


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    group = Workers(WORKER, tmp_path)
    try:
        yield group
    finally:
        group.kill_all()


@pytest.mark.timeout(240)
def test_eight_processes_never_exceed_global_max_in_flight(
        redis_server: RedisServer, prefix: str, workers: Workers) -> None:
    with UpstreamServer() as server:
        server.delay = 0.05
        spec = {"provider": _provider(server, redis_server, prefix, global_max_in_flight=10),
                "tasks": 50, "calls": 1}
        for _ in range(8):
            workers.start(spec)
        _all_ready(workers)
        workers.go()
        results = workers.results()
        assert [r["errors"] for r in results] == [0] * 8, results
        assert sum(r["ok"] for r in results) == 400
        assert server.requests_served == 400
        # The cap was reached (the calls overlapped), and never passed.
        assert server.max_in_flight == 10


@pytest.mark.timeout(120)
def test_a_killed_process_leases_lapse_within_lease_ttl(
        redis_server: RedisServer, prefix: str, workers: Workers) -> None:
    import asyncio

    from rag_llm import create_provider

    ttl = 2.0
    key = f"{prefix}:{{emb/shared}}:in_flight"
    with UpstreamServer() as slow, UpstreamServer() as fast:
        slow.delay = 60.0  # the doomed process's calls hang, holding every lease
        holder = workers.start({"provider": _provider(slow, redis_server, prefix,
                                                      global_max_in_flight=10,
                                                      lease_ttl=ttl), "tasks": 10})
        _all_ready(workers)
        workers.go()
        assert slow.wait_until(lambda s: s.in_flight == 10, timeout=30)
        assert redis_server.command("ZCARD", key) == b":10\r\n"
        time.sleep(ttl)  # it renews them: they outlive their first ttl
        assert redis_server.command("ZCARD", key) == b":10\r\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()

        fast.delay = 1.0
        provider = create_provider("embedding", _provider(
            fast, redis_server, prefix, global_max_in_flight=10, lease_ttl=ttl))

        async def calls() -> None:
            await asyncio.gather(*(provider.aembed("x") for _ in range(10)))
            await provider.aclose()

        import threading

        thread = threading.Thread(target=asyncio.run, args=(calls(),))
        thread.start()
        try:
            assert fast.wait_until(lambda s: s.in_flight == 10, timeout=ttl + 5)
            regained = time.monotonic() - killed
        finally:
            thread.join(30)
        assert regained <= ttl + 1.0, regained
        assert fast.max_in_flight == 10


def _window_counts(times: list[float], window: float) -> int:
    """The most requests received within any ``window`` seconds."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.timeout(240)
@pytest.mark.parametrize("skewed", [False, True], ids=["same-clocks", "skewed-clocks"])
def test_eight_processes_share_one_rate_limit(
        redis_server: RedisServer, prefix: str, workers: Workers, skewed: bool) -> None:
    duration = 10.0
    with UpstreamServer() as server:
        limits = {"requests_per_minute": 6000, "burst": 20}
        for index in range(8):
            skew = (5.0 if index % 4 == 0 else -5.0) if skewed and index % 2 == 0 else 0.0
            workers.start({"provider": _provider(server, redis_server, prefix, warmup=3,
                                                 **limits),
                           "tasks": 3, "duration": duration, "skew": skew,
                           })
        _all_ready(workers)
        workers.go()
        results = workers.results()
        assert [r["errors"] for r in results] == [0] * 8, results
        times = sorted(r.received_at for r in server.requests if r.method == "POST")
    span = times[-1] - times[0]
    admitted = len(times)
    # 100 a second after a burst of 20. The upstream's clock stamps arrivals, which trail
    # admissions by a varying few ms: 50 ms of them is allowed for (5 requests).
    ceiling = 100 * (span + 0.05) + 20 + 1
    assert admitted <= ceiling, (admitted, span)
    assert admitted >= 0.95 * (100 * span + 20), (admitted, span)
    # No second anywhere in the run let through more than a second's worth and the burst.
    assert _window_counts(times, 1.0) <= 100 * 1.05 + 20 + 1
