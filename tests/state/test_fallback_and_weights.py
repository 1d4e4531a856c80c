"""One process against a real redis-server: token weights, bursts, sync calls, Redis away."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from statekit import RedisServer, free_port
from structlog.testing import capture_logs

from rag_llm import RequestExceedsBurstError, create_provider
from rag_llm.testing import UpstreamServer


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


def _config(server: UpstreamServer, state: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "openai_compatible", "model": "m", "name": "emb",
            "base_url": server.base_url, "state": state, "pool_timeout": 30,
            "retry": False, "circuit_breaker": False, **extra}


async def test_large_calls_are_not_starved_by_small_ones(
        redis_server: RedisServer, prefix: str, upstream: UpstreamServer) -> None:
    # 1,000 tokens a second, 2,000 at once; small calls cost 50, the large one 1,500.
    provider = create_provider("embedding", _config(
        upstream, {"url": redis_server.url, "prefix": prefix, "timeout": 1.0},
        tokens_per_minute=60_000, token_burst=2_000))
    small, large = "s" * 200, "L" * 6_000
    stop = time.monotonic() + 6.0
    done_small = 0

    async def flood() -> None:
        nonlocal done_small
        while time.monotonic() < stop:
            await provider.aembed(small)
            done_small += 1

    async def big() -> float:
        await asyncio.sleep(1.0)  # the flood has drained the bucket by now
        started = time.monotonic()
        await provider.aembed(large)
        return time.monotonic() - started

    try:
        results = await asyncio.gather(big(), *(flood() for _ in range(12)))
    finally:
        await provider.aclose()
    waited = results[0]
    # It holds its place: 1.5 s to refill its 1,500 tokens, plus slack for a loaded host;
    # without the hold, twelve small callers would keep the bucket below 1,500 to the end.
    assert waited < 3.0, waited
    assert done_small > 60  # and the small ones flowed too


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "memory"])
async def test_a_call_above_the_burst_fails_at_once(
        redis_server: RedisServer, prefix: str, upstream: UpstreamServer,
        shared: bool) -> None:
    state = {"url": redis_server.url, "prefix": prefix, "timeout": 1.0} if shared else None
    provider = create_provider("embedding", _config(upstream, state, tokens_per_minute=600,
                                                    token_burst=100))
    try:
        started = time.monotonic()
        with pytest.raises(RequestExceedsBurstError) as caught:
            await provider.aembed("x" * 1_000)  # 250 tokens, against a burst of 100
        assert time.monotonic() - started < 0.5
        assert caught.value.limit == "tokens_per_minute"
        assert caught.value.burst == 100
        with pytest.raises(RequestExceedsBurstError):
            await asyncio.to_thread(provider.embed, "x" * 1_000)
    finally:
        await provider.aclose()
    assert upstream.requests_served == 0


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "memory"])
def test_sync_calls_share_the_in_flight_cap(
        redis_server: RedisServer, prefix: str, upstream: UpstreamServer,
        shared: bool) -> None:
    upstream.delay = 0.05
    state = {"url": redis_server.url, "prefix": prefix, "timeout": 1.0} if shared else None
    provider = create_provider("embedding", _config(upstream, state, global_max_in_flight=4))
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(5):
                provider.embed("x")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    provider.close()
    assert errors == []
    assert upstream.requests_served == 80
    assert upstream.max_in_flight == 4


@pytest.mark.timeout(90)
async def test_redis_killed_mid_run_falls_back_then_resumes(
        prefix: str, upstream: UpstreamServer, redis_server: RedisServer) -> None:
    del redis_server  # only to skip (or fail in CI) without redis-server; this one is ours
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisServer(free_port(), workdir)
        redis.start()
        try:
            await _kill_and_restart(redis, prefix, upstream)
        finally:
            redis.kill()


async def _kill_and_restart(redis: RedisServer, prefix: str, upstream: UpstreamServer) -> None:
    timeout = 0.05  # the default Redis timeout
    provider = create_provider("embedding", _config(
        upstream, {"url": redis.url, "prefix": prefix, "timeout": timeout},
        requests_per_minute=1_200, burst=5, global_max_in_flight=4))
    key = f"{prefix}:{{emb/127.0.0.1:{upstream.port}}}:rate:requests"
    finished: list[float] = []
    errors: list[BaseException] = []
    running = True

    async def caller() -> None:
        while running:
            try:
                await provider.aembed("x")
                finished.append(time.monotonic())
            except Exception as exc:
                errors.append(exc)

    with capture_logs() as events:
        tasks = [asyncio.create_task(caller()) for _ in range(4)]
        try:
            await asyncio.sleep(1.0)
            assert redis.command("EXISTS", key) == b":1\r\n"  # shared while it is up
            await asyncio.to_thread(redis.kill)
            killed = time.monotonic()
            await asyncio.sleep(2.0)
            during = [t for t in finished if t > killed]
            # Calls went on at once, under the local limit (20 a second, 5 at once).
            assert during, "no call finished while Redis was away"
            assert during[0] - killed < timeout + 0.5
            assert len(during) >= 20
            await asyncio.to_thread(redis.start)
            restarted = time.monotonic()
            while redis.command("EXISTS", key) != b":1\r\n":
                assert time.monotonic() - restarted < 10, "shared limits did not resume"
                await asyncio.sleep(0.05)
            resumed = time.monotonic() - restarted
        finally:
            running = False
            await asyncio.gather(*tasks)
            await provider.aclose()
    assert errors == []
    names = [e["event"] for e in events if e["event"].startswith("state_backend_")]
    # One event per transition, not one per call: down, then up. (On a loaded host a
    # command may also overrun the 50 ms timeout once more: another pair, never a flood.)
    assert names[:1] == ["state_backend_unavailable"], names
    assert names == ["state_backend_unavailable", "state_backend_recovered"] * (len(names) // 2)
    assert len(names) <= 6, names
    assert resumed < 10


def _two_endpoints(tight: UpstreamServer, roomy: UpstreamServer, redis: RedisServer,
                   prefix: str, name: str, **tight_limits: Any) -> dict[str, Any]:
    return {"type": "openai_compatible", "model": "m", "name": name,
            "endpoints": [{"base_url": tight.base_url, "name": "ep0", **tight_limits},
                          {"base_url": roomy.base_url, "name": "ep1",
                           "requests_per_minute": 600_000, "tokens_per_minute": 60_000_000}],
            "state": {"url": redis.url, "prefix": prefix, "timeout": 1.0},
            "load_balancer": "round_robin", "deadline": 2.0, "retry": False,
            "circuit_breaker": False}


@pytest.mark.parametrize("how", ["async", "sync"])
async def test_a_call_refused_at_one_endpoint_goes_to_another_in_the_same_round(
        redis_server: RedisServer, prefix: str, how: str) -> None:
    # ep0 takes one call a minute, ep1 any number. Each call that ep0's shared limit
    # refuses goes to ep1 at once: held for ep0's minute, past its deadline, it would fail.
    with UpstreamServer() as tight, UpstreamServer() as roomy:
        provider = create_provider("embedding", _two_endpoints(
            tight, roomy, redis_server, prefix, f"hop-{how}", requests_per_minute=1, burst=1))
        started = time.monotonic()
        try:
            for _ in range(10):
                if how == "async":
                    await provider.aembed("x")
                else:
                    await asyncio.to_thread(provider.embed, "x")
        finally:
            await provider.aclose()
        took = time.monotonic() - started
        assert (tight.requests_served, roomy.requests_served) == (1, 9)
    assert took < 1.5, took


async def test_a_call_that_goes_elsewhere_leaves_no_hold_on_the_tokens_limit(
        redis_server: RedisServer, prefix: str) -> None:
    # ep0 refuses the second large call by its tokens limit; the call goes to ep1. Had it
    # held ep0's limit, ep0 would keep its allowance for a caller that is not coming back.
    name = "hop-hold"
    with UpstreamServer() as tight, UpstreamServer() as roomy:
        provider = create_provider("embedding", _two_endpoints(
            tight, roomy, redis_server, prefix, name, tokens_per_minute=600,
            token_burst=100))
        try:
            for _ in range(4):  # round robin: ep0, ep1, then ep0 refuses: ep1 twice
                await provider.aembed("y" * 320)  # 80 tokens
        finally:
            await provider.aclose()
        assert (tight.requests_served, roomy.requests_served) == (1, 3)
    key = f"{prefix}:{{{name}/ep0}}:rate:tokens"
    assert redis_server.command("HGET", key, "hid").strip() == b"$-1", "a hold was left"
    assert redis_server.command("HEXISTS", key, "tat").strip() == b":1"
