"""A server's ``Keep-Alive: timeout=N`` makes idle connections close before the server's.

Proven over real sockets: the server closes connections idle for 2 s and says so with
``Keep-Alive: timeout=2``; the client (``keepalive_expiry=30``) must close them itself
at 1.5 s (2 minus a 0.5 s margin), so no request ever goes out on a connection the
server is dropping.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from support import KEY, provider_config

from rag_llm.config import FIELD_TYPES
from rag_llm.observability.stats import ClientStats
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import UpstreamServer
from rag_llm.transport import Request, get_backend
from rag_llm.transport._counting import IdleExpiry, keep_alive_timeout

TRANSPORTS = ["httpx2", "aiohttp", "httpx"]
SERVER_IDLE = 2.0  # the server closes connections idle this long ...
HINT = 2  # ... and says so
IDLE = 1.8  # past our 1.5 s effective expiry, before the server's 2 s


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def embedder(server: UpstreamServer, transport: str) -> EmbeddingProvider:
    config = provider_config(server, transport=transport, keepalive_expiry=30.0)
    if "retry" in FIELD_TYPES:  # one attempt: a resend would hide a dropped connection
        config["retry"] = {"max_attempts": 1}
    return create_provider("embedding", config)


async def call(provider: EmbeddingProvider, mode: str) -> None:
    if mode == "sync":
        assert len(provider.embed(["x"])) == 1
    else:
        assert len(await provider.aembed(["x"])) == 1


def closed(provider: EmbeddingProvider, mode: str) -> dict[str, int]:
    return provider.pool.stats(mode).snapshot().connections_closed


# -- parsing and the effective expiry ----------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ("timeout=5", 5.0),
    ("timeout=5, max=100", 5.0),
    ("max=100, Timeout = 75", 75.0),
    (b"timeout=2", 2.0),
    ('timeout="3"', 3.0),
    ("timeout=abc", None),
    ("timeout=", None),
    ("timeout=0", None),
    ("timeout=-1", None),
    ("timeout=nan", None),
    ("timeout=inf", None),
    ("max=100", None),
    ("", None),
])
def test_keep_alive_timeout_parses_valid_values_only(header: str | bytes,
                                                      expected: float | None) -> None:
    assert keep_alive_timeout(header) == expected


def test_effective_expiry_keeps_a_margin_and_the_smallest_timeout() -> None:
    idle = IdleExpiry(30.0)
    assert not idle.learn("timeout=75")  # later than our own expiry: nothing changes
    assert idle.seconds == 30.0
    assert idle.learn("timeout=5")
    assert idle.seconds == 4.0  # margin 1 s
    assert not idle.learn("timeout=75")  # another server behind the balancer
    assert not idle.learn("timeout=abc")
    assert not idle.learn("timeout=0")
    assert (idle.seconds, idle.learned) == (4.0, 5.0)
    assert idle.learn("timeout=2")
    assert idle.seconds == 1.5  # margin a quarter of a short timeout
    assert idle.learn("timeout=1")
    assert idle.seconds == 0.75


def test_disabled_keepalive_stays_disabled() -> None:
    idle = IdleExpiry(0.0)
    assert not idle.learn("timeout=5")
    assert idle.seconds == 0.0


# -- over real sockets ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_connection_is_closed_before_the_server_would(
    upstream: UpstreamServer, transport: str, mode: str,
) -> None:
    upstream.keep_alive_header = HINT
    upstream.idle_timeout = SERVER_IDLE
    with embedder(upstream, transport) as provider:
        await call(provider, mode)
        await asyncio.sleep(IDLE)  # lets the async reaper run
        assert upstream.connections_closed_by_client == 1
        assert upstream.connections_closed_by_server == 0
        assert closed(provider, mode) == {"expired": 1}
        await call(provider, mode)
        assert upstream.connections_accepted == 2
        assert upstream.requests_served == 2
        assert provider.pool.stats(mode).snapshot().resent == 0
        await provider.aclose()
    assert upstream.connections_closed_by_server == 0


@pytest.mark.parametrize("header", [None, "abc"], ids=["absent", "malformed"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_without_a_valid_hint_the_connection_stays_open(
    upstream: UpstreamServer, transport: str, mode: str, header: Any,
) -> None:
    """The control: the same timing with no (or a malformed) header closes nothing."""
    upstream.keep_alive_header = header  # "abc": the server sends "timeout=abc"
    upstream.idle_timeout = SERVER_IDLE
    with embedder(upstream, transport) as provider:
        await call(provider, mode)
        await asyncio.sleep(IDLE)
        assert upstream.connections_open == 1
        assert upstream.connections_closed_by_client == 0
        assert closed(provider, mode) == {}
        await provider.aclose()


def _transport_parts(upstream: UpstreamServer, transport: str,
                     client: str) -> tuple[Any, ClientStats, Request]:
    provider = embedder(upstream, transport)  # only for its settings; never opened
    settings = provider.pool.settings
    stats = ClientStats(settings.provider, client, transport)
    backend = get_backend(transport)
    opened = backend.open_async(settings, stats) if client == "async" else \
        backend.open_sync(settings, stats)
    request = Request(
        "POST", f"{upstream.base_url}/embeddings",
        {"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        json.dumps({"model": "text-embedding-3-small", "input": ["x"]}).encode(),
    )
    return opened, stats, request


def _assert_fresh_connection_for_the_second_request(upstream: UpstreamServer,
                                                   stats: ClientStats) -> None:
    assert upstream.requests_served == 2
    assert upstream.connections_accepted == 2
    assert upstream.connections_closed_by_client == 1
    assert upstream.connections_closed_by_server == 0
    snapshot = stats.snapshot()
    assert snapshot.connections_closed == {"expired": 1}
    assert snapshot.resent == 0


async def test_expired_connection_is_not_reused_without_a_prune_async(
    upstream: UpstreamServer, transport: str,
) -> None:
    """No reaper runs here: the check is where an idle connection is taken for a request."""
    upstream.keep_alive_header = HINT
    upstream.idle_timeout = SERVER_IDLE
    opened, stats, request = _transport_parts(upstream, transport, "async")
    try:
        assert (await opened.send(request)).status == 200
        await asyncio.sleep(1.6)
        assert (await opened.send(request)).status == 200
        _assert_fresh_connection_for_the_second_request(upstream, stats)
    finally:
        await opened.aclose()


def test_expired_connection_is_not_reused_without_a_prune_sync(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.keep_alive_header = HINT
    upstream.idle_timeout = SERVER_IDLE
    opened, stats, request = _transport_parts(upstream, transport, "sync")
    try:
        assert opened.send(request).status == 200
        time.sleep(1.6)
        assert opened.send(request).status == 200
        _assert_fresh_connection_for_the_second_request(upstream, stats)
    finally:
        opened.close()
