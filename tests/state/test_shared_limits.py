"""Limits shared by real processes through a real redis-server, against a real upstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from statekit import RedisServer

from rag_llm.testing import UpstreamServer

WORKER = Path(__file__).with_name("worker.py")
MARK = "@worker "
SRC = Path(__file__).resolve().parents[2] / "src"


def _provider(server: UpstreamServer, redis: RedisServer, prefix: str,
              **extra: Any) -> dict[str, Any]:
    # A generous Redis timeout: the tests share two loaded cores; the fallback has its own.
    return {"type": "openai_compatible", "model": "m", "name": "emb",
            "endpoints": [{"base_url": server.base_url, "name": "shared"}],
            "state": {"url": redis.url, "prefix": prefix, "timeout": 1.0},
            "pool_timeout": 60, "retry": False, "circuit_breaker": False, **extra}


class Workers:
    """Worker processes started together: ``go()`` releases them all at once."""

    def __init__(self, tmp: Path) -> None:
        self.go_file = tmp / "go"
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, spec: dict[str, Any]) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps({"go": str(self.go_file), **spec})],
            stdout=subprocess.PIPE, text=True, env=env)
        self.processes.append(process)
        return process

    def wait_ready(self) -> None:
        for process in self.processes:
            assert process.stdout is not None
            line = ""
            while not line.startswith(MARK):
                line = process.stdout.readline()
                assert line, "the worker ended before it was ready"
            assert json.loads(line.removeprefix(MARK)) == {"ready": True}, line

    def go(self) -> None:
        self.go_file.write_text("go")

    def results(self, timeout: float = 120) -> list[dict[str, Any]]:
        found = []
        for process in self.processes:
            out, _ = process.communicate(timeout=timeout)
            assert process.returncode == 0, out
            (line,) = (line for line in out.splitlines() if line.startswith(MARK))
            found.append(json.loads(line.removeprefix(MARK)))
        return found

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout is not None and not process.stdout.closed:
                process.stdout.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    group = Workers(tmp_path)
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
        workers.wait_ready()
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
        workers.wait_ready()
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
        workers.wait_ready()
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
