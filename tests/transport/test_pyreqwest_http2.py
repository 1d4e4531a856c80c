"""HTTP/2 on ``transport = "pyreqwest"``: what nginx counts, and what the pool model says.

nginx (Debian's ``nginx-light``, the benchmark suite's upstream) offers ``h2`` by ALPN on its
HTTPS port and logs each request's connection and protocol, so the connection count and the
protocol come from the server. The fallback cases use rag-llm's own test server, which
speaks HTTP/1.1 only, over TLS and over plain HTTP.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import KEY, provider_config

from rag_llm.observability.stats import ClientStats
from rag_llm.providers import create_provider
from rag_llm.testing import UpstreamServer
from rag_llm.transport._pool_model import HTTP2, PoolModel

pytest.importorskip("pyreqwest", reason="transport='pyreqwest' needs the native extra")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nginx() -> Iterator[Any]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file():
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    pytest.importorskip("trustme", reason="the upstream makes its certificate with trustme")
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not installed: run from the tree
    try:
        from benchmarks.upstream import Nginx
    finally:
        sys.path.remove(str(ROOT))
    with Nginx() as server:
        if not server.http2:
            pytest.skip("this nginx has no HTTP/2 module")
        yield server


def h2_config(nginx: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": nginx.base_url("https"), "api_key": KEY,
            "model": "text-embedding-3-small", "retry": False, "circuit_breaker": False,
            "verify": nginx.ca_path, "transport": "pyreqwest", "http2": True}


async def test_concurrent_async_calls_share_one_http2_connection(nginx: Any) -> None:
    mark = nginx.log_mark()
    async with create_provider("embedding", h2_config(nginx)) as p:
        for burst in (32, 32):  # the first burst opens the connection, the second reuses it
            await asyncio.gather(*(p.aembed([f"t{i}"]) for i in range(burst)))
        client = p.pool_stats().clients[1]
        window = nginx.log_window(mark, expect=64)
    assert (window.requests, window.http2_requests, window.connections_used) == (64, 64, 1)
    assert (client.stats.connections_opened, client.active, client.idle) == (1, 0, 1)
    assert client.stats.connections_estimated


def test_sync_calls_from_threads_share_one_http2_connection(nginx: Any) -> None:
    mark = nginx.log_mark()
    with create_provider("embedding", h2_config(nginx)) as p, \
            ThreadPoolExecutor(8) as threads:
        list(threads.map(lambda i: p.embed([f"t{i}"]), range(40)))
        client = p.pool_stats().clients[0]
        window = nginx.log_window(mark, expect=40)
    assert (window.requests, window.http2_requests, window.connections_used) == (40, 40, 1)
    assert (client.stats.connections_opened, client.idle) == (1, 1)


async def test_a_stream_runs_over_http2_too(nginx: Any) -> None:
    mark = nginx.log_mark()
    config = {**h2_config(nginx), "model": "gpt-4o-mini",
              "base_url": nginx.base_url("https").replace("/v1", "/stream/v1")}
    async with create_provider("llm", config) as p:
        chunks = [[c async for c in p.astream([{"role": "user", "content": "hi"}])]
                  for _ in range(3)]
        window = nginx.log_window(mark, expect=3)
        client = p.pool_stats().clients[1]
    assert chunks == [["Hello from", " the benchmark."]] * 3
    assert (window.http2_requests, window.connections_used) == (3, 1)
    assert (client.stats.connections_opened, client.idle) == (1, 1)


@pytest.mark.parametrize("tls", [True, False], ids=["tls-without-h2", "plain-http"])
async def test_without_h2_at_the_server_the_model_counts_http1_connections(tls: bool) -> None:
    with UpstreamServer(tls=tls) as upstream:
        upstream.delay = 0.05  # the ten calls overlap: one reused connection, nine new
        async with create_provider("embedding", provider_config(
                upstream, transport="pyreqwest", http2=True)) as p:
            await p.aembed(["first"])  # HTTP/1.1 comes back: the model turns to its rules
            await asyncio.gather(*(p.aembed([f"t{i}"]) for i in range(10)))
            client = p.pool_stats().clients[1]
        assert upstream.connections_accepted == 10
        assert (client.stats.connections_opened, client.idle) == (10, 10)


def test_the_http2_model_keeps_one_connection_until_lost_or_expired() -> None:
    stats = ClientStats("openai", "async", "pyreqwest")
    model = PoolModel(stats, max_idle=100, expiry=0.05, multiplexed=True)
    assert [model.start() for _ in range(3)] == [False, True, True]
    assert (model.counts().active, model.counts().idle) == (1, 0)
    for _ in range(3):
        model.spoke(HTTP2)
        model.end(ok=True)
    assert (model.counts().active, model.counts().idle) == (0, 1)
    model.start()
    model.end(ok=False)  # a stream's failure (a timeout, a cut body) keeps the connection
    model.start()
    model.end(ok=False, lost=True)  # connecting failed, or the connection was cut
    assert (model.counts().active, model.counts().idle) == (0, 0)
    model.start()
    model.end(ok=True)
    time.sleep(0.06)
    model.prune()
    snapshot = stats.snapshot()
    assert snapshot.connections_opened == 2
    assert snapshot.connections_closed == {"error": 1, "expired": 1}


def test_without_keep_alive_the_http2_connection_closes_when_its_calls_end() -> None:
    stats = ClientStats("openai", "async", "pyreqwest")
    model = PoolModel(stats, max_idle=0, expiry=30.0, multiplexed=True)
    model.start()
    model.start()
    model.end(ok=True)
    assert model.counts().active == 1
    model.end(ok=True)
    assert stats.snapshot().connections_closed == {"client": 1}
