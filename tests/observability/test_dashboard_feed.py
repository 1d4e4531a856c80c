"""The dashboard frame agrees with the server's own counts, on real traffic over sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics

import pytest
from support import KEY, eventually, provider_config

from rag_llm.api.dashboard import dashboard_frame
from rag_llm.api.dashboard.feed import encode_event
from rag_llm.errors import ServerError
from rag_llm.observability.stats import percentile
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer


def embedder(server: UpstreamServer, name: str, **overrides: object) -> EmbeddingProvider:
    return create_provider("embedding", provider_config(server, name=name, **overrides))


def only_provider(frame: dict[str, object]) -> dict[str, object]:
    providers = frame["providers"]
    assert isinstance(providers, list)
    assert len(providers) == 1
    found: dict[str, object] = providers[0]
    return found


def client_of(provider: dict[str, object], client: str) -> dict[str, object]:
    clients = provider["clients"]
    assert isinstance(clients, list)
    return next(c for c in clients if c["client"] == client)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0


async def test_frame_counts_one_connection_for_200_sequential_calls(
    upstream: UpstreamServer,
) -> None:
    async with embedder(upstream, "feed-seq") as provider:
        for i in range(200):
            await provider.aembed([f"text {i}"])
        snapshot = provider.pool_stats()
        frame = dashboard_frame([snapshot], now=1234.5)
    assert frame["time"] == 1234.5
    provider_frame = only_provider(frame)
    assert provider_frame["provider"] == "feed-seq"
    assert provider_frame["state"] == "open"
    assert provider_frame["max_connections"] == 100
    assert provider_frame["max_keepalive_connections"] == 20
    assert provider_frame["last_error"] is None
    client = client_of(provider_frame, "async")
    assert client["connections_opened"] == upstream.connections_accepted == 1
    assert client["requests"] == upstream.requests_served == 200
    assert client["reuse_ratio"] == 200.0
    assert (client["active"], client["idle"]) == (0, 1)
    assert client["pool_wait_count"] == 200
    assert client["errors"] == 0
    sync = client_of(provider_frame, "sync")
    assert (sync["open"], sync["requests"], sync["reuse_ratio"]) == (False, 0, None)


async def test_latency_percentiles_match_the_recorded_calls(upstream: UpstreamServer) -> None:
    upstream.delay = 0.001
    async with embedder(upstream, "feed-latency") as provider:
        await asyncio.gather(*(provider.aembed([f"t{i}"]) for i in range(120)))
        snapshot = provider.pool_stats()
    recorded = next(c for c in snapshot.clients if c.client == "async").stats.recent_latencies
    latency = client_of(only_provider(dashboard_frame([snapshot])), "async")["latency"]
    assert isinstance(latency, dict)
    assert latency["samples"] == len(recorded) == 120
    # statistics' "inclusive" quantiles interpolate linearly, as the frame does.
    cuts = statistics.quantiles(recorded, n=100, method="inclusive")
    assert latency["p50"] == pytest.approx(statistics.median(recorded))
    assert latency["p95"] == pytest.approx(cuts[94])
    assert latency["p99"] == pytest.approx(cuts[98])
    assert 0.001 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= max(recorded)


def test_sync_and_async_clients_are_reported_apart(upstream: UpstreamServer) -> None:
    with embedder(upstream, "feed-both") as provider:
        for _ in range(30):
            provider.embed(["sync"])

        async def calls() -> None:
            for _ in range(20):
                await provider.aembed(["async"])

        asyncio.run(calls())
        frame = dashboard_frame([provider.pool_stats()])
    clients = only_provider(frame)["clients"]
    assert isinstance(clients, list)
    assert [c["client"] for c in clients] == ["sync", "async"]
    assert [c["requests"] for c in clients] == [30, 20]
    assert [c["connections_opened"] for c in clients] == [1, 1]
    assert upstream.connections_accepted == 2


async def test_pools_that_share_a_name_are_summed(upstream: UpstreamServer) -> None:
    async with embedder(upstream, "feed-shared", max_connections=10,
                        max_keepalive_connections=5) as old:
        for _ in range(5):
            await old.aembed(["old"])
    async with embedder(upstream, "feed-shared", max_connections=30,
                        max_keepalive_connections=6) as new:
        for _ in range(7):
            await new.aembed(["new"])
        frame = dashboard_frame([old.pool_stats(), new.pool_stats()])
    provider = only_provider(frame)
    assert (provider["pools"], provider["state"]) == (2, "open")
    assert (provider["max_connections"], provider["max_keepalive_connections"]) == (30, 6)
    client = client_of(provider, "async")
    assert client["requests"] == 12
    assert client["connections_opened"] == 2
    assert client["connections_closed"] == 1  # the old pool's, closed at shutdown
    assert client["closed_by_reason"] == {"shutdown": 1}


async def test_requests_waiting_and_pool_wait_are_reported(upstream: UpstreamServer) -> None:
    upstream.delay = 0.15
    async with embedder(upstream, "feed-wait", max_connections=1,
                        max_keepalive_connections=1) as provider:
        calls = asyncio.gather(*(provider.aembed([f"t{i}"]) for i in range(4)))

        def waiting() -> int:
            client = client_of(only_provider(dashboard_frame([provider.pool_stats()])), "async")
            return int(str(client["waiting"]))

        assert await eventually(lambda: waiting() >= 2)
        busy = client_of(only_provider(dashboard_frame([provider.pool_stats()])), "async")
        await calls
        done = client_of(only_provider(dashboard_frame([provider.pool_stats()])), "async")
    assert busy["active"] == 1
    assert done["waiting"] == 0
    assert done["pool_wait_count"] == 4
    # The last of four calls through one connection waits for three 0.15 s calls.
    assert isinstance(done["pool_wait_sum"], float)
    assert done["pool_wait_sum"] >= 0.15 * (1 + 2 + 3) * 0.8


async def test_errors_are_counted_and_no_secret_reaches_the_frame(
    upstream: UpstreamServer,
) -> None:
    leak = f"bad key {KEY} at http://user:hunter2@example.com/v1?api-key=hunter2"
    upstream.add_fault(Fault(status=500, body={"error": {"message": leak}}))
    async with embedder(upstream, f"feed-{KEY}") as provider:
        with contextlib.suppress(ServerError):
            await provider.aembed(["x"])
        await provider.aembed(["y"])
        frame = dashboard_frame([provider.pool_stats()])
    provider_frame = only_provider(frame)
    client = client_of(provider_frame, "async")
    assert (client["errors"], client["requests"]) == (1, 2)
    assert client["errors_by_type"] == {"ServerError": 1}
    assert isinstance(provider_frame["last_error"], str)
    assert provider_frame["last_error"].startswith("ServerError")
    text = json.dumps(frame)
    assert KEY not in text
    assert "hunter2" not in text
    assert provider_frame["provider"] == "feed-**********"


def test_encode_event_is_one_data_line() -> None:
    frame = dashboard_frame([], now=1.0)
    event = encode_event(frame)
    assert event.startswith("data: ")
    assert event.endswith("\n\n")
    assert event.count("\n") == 2
    assert json.loads(event.removeprefix("data: ")) == frame
