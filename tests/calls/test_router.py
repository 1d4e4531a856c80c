"""Retries, breakers, balancing and shutdown over real sockets, against faulty local upstreams."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import KEY, PYREQWEST, eventually

from rag_llm import create_provider, errors
from rag_llm.testing import Fault, UpstreamServer

# Faults that outlast any test.
FOREVER = 1_000_000


@pytest.fixture
def three() -> Iterator[list[UpstreamServer]]:
    with UpstreamServer() as a, UpstreamServer() as b, UpstreamServer() as c:
        yield [a, b, c]


@pytest.fixture
def two() -> Iterator[list[UpstreamServer]]:
    with UpstreamServer() as a, UpstreamServer() as b:
        yield [a, b]


def endpoints_config(servers: list[UpstreamServer], **overrides: Any) -> dict[str, Any]:
    """An embedding provider over ``servers`` (named ep0, ep1, ...) with quick retries."""
    config: dict[str, Any] = {
        "type": "openai",
        "model": "text-embedding-3-small",
        "api_key": KEY,
        "endpoints": [{"base_url": s.base_url, "name": f"ep{i}"} for i, s in enumerate(servers)],
        "retry": {"base_delay": 0.005, "max_delay": 0.02},
    }
    config.update(overrides)
    return config


def single_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return endpoints_config([server], **overrides)


async def embed_once(provider: Any, mode: str, text: str) -> list[list[float]]:
    """One ``aembed`` (mode "async") or ``embed`` in a thread (mode "sync"), then close."""
    vectors: list[list[float]]
    if mode == "async":
        async with provider:
            vectors = await provider.aembed(text)
    else:
        with provider:
            vectors = await asyncio.to_thread(provider.embed, text)
    return vectors


async def test_a_503_stretch_on_one_of_three_is_absorbed_and_ejected(
        three: list[UpstreamServer]) -> None:
    a, b, c = three
    b.add_fault(Fault(status=503, times=FOREVER))
    provider = create_provider("embedding", endpoints_config(three))
    calls, failures = 1000, 0
    async with provider:
        for i in range(calls):
            try:
                await provider.aembed(f"text {i}")
            except errors.RagLLMError:
                failures += 1
        stats = provider.routing_stats()
    assert failures / calls <= 0.001
    assert len(b.requests) <= 5, "the failing endpoint kept receiving traffic"
    assert len(a.requests) + len(c.requests) >= calls
    assert {e.name: e.breaker for e in stats.endpoints}["ep1"] == "open"


async def test_a_recovered_endpoint_gets_one_probe_then_traffic(
        three: list[UpstreamServer]) -> None:
    _a, b, _c = three
    b.add_fault(Fault(status=503, times=FOREVER))
    provider = create_provider("embedding", endpoints_config(
        three, circuit_breaker={"consecutive_failures": 5, "open_duration": 0.3},
        load_balancer="round_robin"))
    async with provider:
        while len(b.requests) < 5:
            await provider.aembed("warm")
        assert provider.routing_stats().endpoints[1].breaker == "open"
        b.clear_faults()
        b.delay = 0.3  # the probe stays in flight long enough to look for a second one
        await asyncio.sleep(0.35)
        burst = [asyncio.create_task(provider.aembed(f"burst {i}")) for i in range(30)]
        await asyncio.sleep(0.15)
        in_flight_at_b = len(b.requests) - 5
        await asyncio.gather(*burst)
        b.delay = 0.0
        before = len(b.requests)
        for i in range(300):
            await provider.aembed(f"after {i}")
    assert in_flight_at_b == 1, "half-open must let exactly one probe through"
    assert len(b.requests) - before > 30, "the recovered endpoint got no traffic back"


async def test_when_every_endpoint_fails_the_budget_bounds_attempts(
        three: list[UpstreamServer]) -> None:
    for server in three:
        server.add_fault(Fault(status=503, times=FOREVER))
    provider = create_provider("embedding", endpoints_config(
        three, circuit_breaker=False,
        retry={"max_attempts": 3, "base_delay": 0.001, "max_delay": 0.002},
        retry_budget={"percent_can_retry": 0.2, "min_retries_per_second": 1.0}))

    def sent() -> int:
        return sum(len(s.requests) for s in three)

    async with provider:
        for _ in range(100):  # spends the reserve
            with pytest.raises(errors.ServerError):
                await provider.aembed("x")
        start, calls = sent(), 400
        slowest = 0.0
        for _ in range(calls):
            began = time.monotonic()
            with pytest.raises(errors.ServerError) as caught:
                await provider.aembed("x")
            slowest = max(slowest, time.monotonic() - began)
    attempts_per_call = (sent() - start) / calls
    assert attempts_per_call <= 1.25
    assert slowest < 0.5
    assert "503" in str(caught.value)
    assert any("retry budget" in note for note in caught.value.__notes__)


async def test_when_every_circuit_is_open_calls_fail_fast_naming_endpoints(
        three: list[UpstreamServer]) -> None:
    for server in three:
        server.add_fault(Fault(status=503, times=FOREVER))
    provider = create_provider("embedding", endpoints_config(three))
    async with provider:
        for _ in range(20):
            try:
                await provider.aembed("x")
            except errors.CircuitOpenError:
                break
            except errors.ServerError:
                pass
        sent = sum(len(s.requests) for s in three)
        began = time.monotonic()
        for _ in range(100):
            with pytest.raises(errors.CircuitOpenError) as caught:
                await provider.aembed("x")
        elapsed = time.monotonic() - began
    assert sent == 15, "each breaker opens after 5 consecutive failures"
    assert sum(len(s.requests) for s in three) == sent
    assert elapsed < 0.5
    message = str(caught.value)
    for server in three:
        assert f"127.0.0.1:{server.port}" in message
    assert all(20 < wait <= 30 for wait in caught.value.retry_in.values())


async def test_retry_after_keeps_calls_off_the_endpoint_until_it_ends(
        two: list[UpstreamServer]) -> None:
    a, _b = two
    a.add_fault(Fault(status=429, headers={"retry-after": "1"}))
    provider = create_provider("embedding", endpoints_config(two))
    async with provider:
        ends = time.monotonic() + 1.6
        while time.monotonic() < ends:
            await provider.aembed("x")
    limited, *later = a.requests
    assert later, "the endpoint never got traffic back after Retry-After"
    assert min(r.received_at for r in later) - limited.received_at >= 1.0


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_single_endpoint_waits_out_retry_after(upstream: UpstreamServer,
                                                       mode: str) -> None:
    upstream.add_fault(Fault(status=429, headers={"retry-after": "1"}))
    provider = create_provider("embedding", single_config(upstream))
    began = time.monotonic()
    vectors = await embed_once(provider, mode, "x")
    assert vectors == [upstream.expected_embedding("x")]
    assert time.monotonic() - began >= 1.0
    first, second = upstream.requests
    assert second.received_at - first.received_at >= 1.0


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_resets_before_the_response_are_retried(upstream: UpstreamServer,
                                                      mode: str) -> None:
    upstream.add_fault(Fault(action="reset", times=2))
    provider = create_provider("embedding", single_config(upstream))
    vectors = await embed_once(provider, mode, "x")
    assert vectors == [upstream.expected_embedding("x")]
    attempts = provider.routing_stats().endpoints[0].attempts
    assert attempts["ok"] == 1
    assert sum(attempts.values()) == 3


def chat_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return single_config(server, model="gpt-4o-mini", **overrides)


async def stream_text(provider: Any) -> list[str]:
    return [piece async for piece in provider.astream([{"role": "user", "content": "hello"}])]


async def test_a_stream_cut_after_its_first_chunk_raises_with_what_arrived(
        upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(action="truncate_stream"))
    received: list[str] = []

    async def read(provider: Any) -> None:
        async for piece in provider.astream([{"role": "user", "content": "hello"}]):
            received.append(piece)

    async with create_provider("llm", chat_config(upstream)) as provider:
        with pytest.raises(errors.StreamInterruptedError) as caught:
            await read(provider)
    assert received, "the first chunk should have reached the caller"
    assert caught.value.received == "".join(received)
    assert len(upstream.requests) == 1, "a stream that reached the caller must not be retried"


async def test_a_stream_dropped_before_its_first_token_is_retried_without_duplicates(
        upstream: UpstreamServer) -> None:
    async with create_provider("llm", chat_config(upstream)) as provider:
        clean = await stream_text(provider)
        upstream.add_fault(Fault(action="close"))
        retried = await stream_text(provider)
    assert retried == clean
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(("knob", "setting", "error"), [
    ("stream_interval", "stream_idle_timeout", errors.StreamInterruptedError),
    ("delay", "first_token_timeout", errors.ReadTimeoutError),
])
async def test_a_stream_that_goes_quiet_ends_at_its_timeout(
        upstream: UpstreamServer, knob: str, setting: str, error: type[Exception]) -> None:
    setattr(upstream, knob, 1.0)  # before the first token, or between two
    config = chat_config(upstream, retry=False, **{setting: 0.2})
    async with create_provider("llm", config) as provider:
        began = time.monotonic()
        with pytest.raises(error, match=setting):
            await stream_text(provider)
    assert time.monotonic() - began < 0.6


async def test_a_black_holed_endpoint_costs_at_most_one_timeout_per_call(
        two: list[UpstreamServer]) -> None:
    a, _b = two
    a.add_fault(Fault(action="blackhole", times=FOREVER))
    provider = create_provider("embedding", endpoints_config(two, read_timeout=0.3))
    slowest = 0.0
    async with provider:
        for _ in range(40):
            began = time.monotonic()
            await provider.aembed("x")
            slowest = max(slowest, time.monotonic() - began)
    assert slowest < 0.3 + 0.2
    assert len(a.requests) <= 5, "the black hole stayed in rotation"


async def test_no_call_outlives_its_deadline(upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(action="blackhole", times=FOREVER))
    provider = create_provider("embedding", single_config(upstream, deadline=0.5))
    async with provider:
        for _ in range(3):
            began = time.monotonic()
            with pytest.raises(errors.DeadlineExceededError, match=r"deadline=0\.5s"):
                await provider.aembed("x")
            assert time.monotonic() - began < 0.5 + 0.1


@pytest.mark.parametrize("transport", ["auto", "aiohttp", "httpx2", PYREQWEST])
def test_no_sync_call_outlives_its_deadline(upstream: UpstreamServer, transport: str) -> None:
    upstream.add_fault(Fault(action="blackhole", times=FOREVER))
    config = single_config(upstream, deadline=0.5, transport=transport)
    with create_provider("embedding", config) as provider:
        began = time.monotonic()
        with pytest.raises(errors.DeadlineExceededError, match=r"deadline=0\.5s"):
            provider.embed("x")
        assert time.monotonic() - began < 0.5 + 0.1


async def test_cancelling_a_call_mid_backoff_stops_it_at_once(upstream: UpstreamServer) -> None:
    upstream.add_fault(Fault(status=503, headers={"retry-after": "5"}))
    async with create_provider("embedding", single_config(upstream)) as provider:
        call = asyncio.create_task(provider.aembed("x"))
        assert await eventually(lambda: len(upstream.requests) == 1)
        await asyncio.sleep(0.05)
        began = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - began < 0.1
        await asyncio.sleep(0.3)
        assert len(upstream.requests) == 1
        (async_client,) = [c for c in provider.pool_stats().clients if c.client == "async"]
        assert async_client.active == 0


async def test_shutdown_drains_calls_in_flight_and_refuses_new_ones(
        upstream: UpstreamServer) -> None:
    upstream.delay = 0.3
    provider = create_provider("embedding", single_config(upstream, drain_timeout=5))
    calls = [asyncio.create_task(provider.aembed(f"t{i}")) for i in range(5)]
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(provider.aclose())
    await asyncio.sleep(0.01)
    with pytest.raises(errors.ProviderClosedError, match="shutting down"):
        await provider.aembed("late")
    results = await asyncio.gather(*calls)
    await closing
    assert [r[0] for r in results] == [upstream.expected_embedding(f"t{i}") for i in range(5)]


async def test_shutdown_cancels_calls_still_running_at_the_drain_deadline(
        upstream: UpstreamServer) -> None:
    upstream.delay = 3.0
    provider = create_provider("embedding", single_config(upstream, drain_timeout=0.2))
    calls = [asyncio.create_task(provider.aembed(f"t{i}")) for i in range(3)]
    await asyncio.sleep(0.1)
    began = time.monotonic()
    await provider.aclose()
    assert time.monotonic() - began < 1.0
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def test_the_local_token_limit_refuses_calls_it_cannot_place_before_the_deadline(
        upstream: UpstreamServer) -> None:
    config = single_config(upstream, tokens_per_minute=600, deadline=1.0)
    async with create_provider("embedding", config) as provider:
        await provider.aembed("x" * 2400)  # about 600 tokens: the whole minute's allowance
        began = time.monotonic()
        with pytest.raises(errors.LocalRateLimitError, match="rate limit"):
            await provider.aembed("x" * 2400)
        assert time.monotonic() - began < 0.1
        assert provider.routing_stats().rejected == {"rate_limited": 1}
    assert len(upstream.requests) == 1


async def test_the_local_request_limit_spreads_calls_over_time(upstream: UpstreamServer) -> None:
    # 120 a minute is 2 a second: a bucket of 120 at the start, then one per half second.
    config = single_config(upstream, requests_per_minute=120)
    async with create_provider("embedding", config) as provider:
        for _ in range(120):
            await provider.aembed("x")
        began = time.monotonic()
        for _ in range(3):  # the first waits for what is left of a half second, then 0.5 s each
            await provider.aembed("x")
        waited = time.monotonic() - began
    assert 0.9 < waited < 1.8


async def test_warmup_opens_connections_before_the_first_call(upstream: UpstreamServer) -> None:
    async with create_provider("embedding", single_config(upstream, warmup=4)) as provider:
        await provider.awarmup()
        assert upstream.connections_accepted == 4
        await asyncio.gather(*(provider.aembed(f"t{i}") for i in range(4)))
        assert upstream.connections_accepted == 4


async def test_active_health_checks_take_a_failing_endpoint_out_and_back(
        two: list[UpstreamServer]) -> None:
    a, _b = two
    a.add_fault(Fault(status=503, path="/v1/models", times=FOREVER))
    config = endpoints_config(two, load_balancer="round_robin", health_check={
        "interval": 0.05, "timeout": 0.5, "healthy_threshold": 1, "unhealthy_threshold": 1})
    async with create_provider("embedding", config) as provider:
        await provider.aembed("start")

        def healthy() -> dict[str, bool]:
            return {e.name: e.healthy for e in provider.routing_stats().endpoints}

        assert await eventually(lambda: healthy() == {"ep0": False, "ep1": True})
        served = sum(r.path == "/v1/embeddings" for r in a.requests)
        for i in range(50):
            await provider.aembed(f"t{i}")
        assert sum(r.path == "/v1/embeddings" for r in a.requests) == served
        a.clear_faults()
        assert await eventually(lambda: healthy() == {"ep0": True, "ep1": True})
        for i in range(100):
            await provider.aembed(f"u{i}")
        assert sum(r.path == "/v1/embeddings" for r in a.requests) > served
    assert not [t for t in threading.enumerate() if "rag_llm-health" in t.name]


async def test_metrics_show_attempts_breakers_and_rejections(two: list[UpstreamServer]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from rag_llm.metrics import render_metrics

    _a, b = two
    b.add_fault(Fault(status=503, times=FOREVER))
    config = endpoints_config(two, name="metered", load_balancer="round_robin")
    async with create_provider("embedding", config) as provider:
        for i in range(20):
            await provider.aembed(f"t{i}")
        text = render_metrics().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.labels.get("provider") == "metered"}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"provider": "metered", **labels}.items())))]

    assert value("rag_llm_endpoint_attempts_total", endpoint="ep1", outcome="503") == 5
    assert value("rag_llm_endpoint_attempts_total", endpoint="ep0", outcome="ok") == 20
    assert value("rag_llm_circuit_breaker_state", endpoint="ep1", state="open") == 1
    assert value("rag_llm_circuit_breaker_state", endpoint="ep0", state="closed") == 1
    assert value("rag_llm_retries_total") == 5
    assert KEY not in text


async def test_the_locator_warms_up_configured_providers(upstream: UpstreamServer) -> None:
    from rag_llm import ServiceLocator, Settings

    settings = Settings(providers={"embedding": single_config(upstream, warmup=3)})
    locator = ServiceLocator(settings)
    await locator.awarmup()
    assert upstream.connections_accepted == 3
    await locator.cleanup()
