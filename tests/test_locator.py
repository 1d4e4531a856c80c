"""The service locator: builds providers from settings and closes every pool at cleanup."""

from __future__ import annotations

import asyncio
import threading

import pytest
from structlog.testing import capture_logs
from support import eventually, open_fds, provider_config

import rag_llm.locator as locator_module
from rag_llm.config import Settings
from rag_llm.errors import ConfigError, LocatorClosedError, RagLLMError
from rag_llm.locator import (
    LocatorState,
    ServiceLocator,
    cleanup_service_locator,
    get_service_locator,
)
from rag_llm.providers import ChatProvider, EmbeddingProvider
from rag_llm.testing import UpstreamServer


def settings_for(server: UpstreamServer) -> Settings:
    return Settings(providers={
        "embedding": provider_config(server),
        "llm": provider_config(server, model="gpt-4o-mini"),
    })


class SyncClosing:
    def __init__(self) -> None:
        self.closed_in: str | None = None

    def close(self) -> None:
        self.closed_in = threading.current_thread().name


class AsyncClosing:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.closed = True


class FailingClose:
    def close(self) -> None:
        raise OSError("disk on fire")


async def test_get_builds_each_provider_once_from_settings(upstream: UpstreamServer) -> None:
    locator = ServiceLocator(settings_for(upstream))
    embedding = locator.get("embedding")
    assert isinstance(embedding, EmbeddingProvider)
    assert locator.get("embedding") is embedding
    assert isinstance(locator.get("llm"), ChatProvider)
    await locator.cleanup()


def test_get_of_an_unconfigured_kind_names_it() -> None:
    with pytest.raises(ConfigError, match=r"providers\.llm"):
        ServiceLocator(Settings()).get("llm")


def test_registering_a_second_provider_of_a_kind_is_refused() -> None:
    locator = ServiceLocator(Settings())
    locator.register("embedding", SyncClosing())
    with pytest.raises(ValueError, match="already registered"):
        locator.register("embedding", SyncClosing())


async def test_cleanup_closes_sync_and_async_closers_and_survives_a_failure() -> None:
    locator = ServiceLocator(Settings())
    sync, async_, failing = SyncClosing(), AsyncClosing(), FailingClose()
    locator.register("sync", sync)
    locator.register("failing", failing)
    locator.register("async", async_)
    with capture_logs() as logs:
        await locator.cleanup()
    assert async_.closed
    # A plain close runs in an executor thread, off the event loop.
    assert sync.closed_in is not None
    assert sync.closed_in != threading.current_thread().name
    events = {e["event"]: e for e in logs}
    assert events["provider_close_failed"]["provider"] == "failing"
    assert "disk on fire" in events["provider_close_failed"]["error"]
    assert events["service_locator_cleanup_failed"]["failed"] == ["failing"]
    assert locator.providers() == {}


async def test_providers_close_concurrently() -> None:
    class Slow:
        async def aclose(self) -> None:
            await asyncio.sleep(0.2)

    locator = ServiceLocator(Settings())
    for i in range(5):
        locator.register(f"slow{i}", Slow())
    started = asyncio.get_running_loop().time()
    await locator.cleanup()
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_cleanup_service_locator_closes_every_connection_and_fd(
    upstream: UpstreamServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await cleanup_service_locator()
    monkeypatch.setattr(locator_module, "_locator", ServiceLocator(settings_for(upstream)))
    fds_before = open_fds()
    locator = get_service_locator()
    embedding, llm = locator.get("embedding"), locator.get("llm")
    await embedding.aembed(["async"])
    await asyncio.to_thread(embedding.embed, ["sync"])
    await llm.achat([{"role": "user", "content": "hi"}])
    assert upstream.connections_open == 3
    with capture_logs() as logs:
        await cleanup_service_locator()
    assert await eventually(lambda: upstream.connections_open == 0)
    assert open_fds() == fds_before
    assert upstream.connections_closed_by_client == 3
    names = [e["event"] for e in logs]
    assert names.count("provider_closed") == 2
    assert names.count("connection_pool_closed") == 3
    success = next(e for e in logs if e["event"] == "service_locator_cleanup_success")
    assert success["providers"] == 2
    assert success["duration_ms"] >= 0
    assert get_service_locator() is not locator
    await cleanup_service_locator()


async def test_get_and_register_after_cleanup_are_refused_naming_the_kind(
    upstream: UpstreamServer,
) -> None:
    locator = ServiceLocator(settings_for(upstream))
    locator.get("embedding")
    assert locator.state is LocatorState.OPEN
    await locator.cleanup()
    assert locator.state is LocatorState.CLOSED
    with pytest.raises(LocatorClosedError, match=r"'llm'.*cleaned up") as caught:
        locator.get("llm")
    assert isinstance(caught.value, RagLLMError)
    assert caught.value.provider_type == "llm"
    # Not even a provider it built before: those are closed.
    with pytest.raises(LocatorClosedError, match="'embedding'"):
        locator.get("embedding")
    with pytest.raises(LocatorClosedError, match="'sync'"):
        locator.register("sync", SyncClosing())
    assert locator.providers() == {}


async def test_get_while_cleanup_runs_is_refused_as_shutting_down() -> None:
    seen: list[object] = []

    class Probing:
        async def aclose(self) -> None:
            seen.append(locator.state)
            with pytest.raises(LocatorClosedError, match="shutting down") as caught:
                locator.get("other")
            seen.append(caught.value)

    locator = ServiceLocator(Settings())
    locator.register("probing", Probing())
    await locator.cleanup()
    assert seen[0] is LocatorState.CLOSING


async def test_cleanup_twice_is_harmless() -> None:
    class Counting:
        closes = 0

        def close(self) -> None:
            Counting.closes += 1

    locator = ServiceLocator(Settings())
    locator.register("counting", Counting())
    await locator.cleanup()
    with capture_logs() as logs:
        await locator.cleanup()
    assert Counting.closes == 1
    assert locator.state is LocatorState.CLOSED
    assert not [e for e in logs if e["log_level"] == "error"]


async def test_the_process_wide_locator_is_fresh_after_cleanup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await cleanup_service_locator()
    monkeypatch.setattr(locator_module, "_locator", None)
    first = get_service_locator()
    first.register("sync", SyncClosing())
    await cleanup_service_locator()
    assert first.state is LocatorState.CLOSED
    second = get_service_locator()
    assert second is not first
    assert second.state is LocatorState.OPEN
    second.register("sync", SyncClosing())  # a fresh locator takes providers again
    await cleanup_service_locator()
    await cleanup_service_locator()  # nothing left: harmless


def test_drain_timeout_is_the_longest_of_the_providers_built(upstream: UpstreamServer) -> None:
    locator = ServiceLocator(Settings(providers={
        "embedding": provider_config(upstream, drain_timeout=2.5),
        "llm": provider_config(upstream, model="gpt-4o-mini", drain_timeout=0.5),
    }))
    assert locator.drain_timeout == 10.0  # nothing built yet: the default
    locator.get("llm")
    assert locator.drain_timeout == 0.5
    locator.build_all()
    locator.register("reranker", SyncClosing())  # no config: not counted
    assert locator.drain_timeout == 2.5
    asyncio.run(locator.cleanup())
