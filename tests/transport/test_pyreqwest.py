"""The native transport's own behaviour: what the shared transport suites cannot cover."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from support import KEY, provider_config

from rag_llm import errors
from rag_llm.config import ProviderConfig
from rag_llm.observability.stats import ClientStats
from rag_llm.providers import create_provider
from rag_llm.testing import Fault, UpstreamServer

pytest.importorskip("pyreqwest", reason="pyreqwest is not installed: rag-llm[native]")

from rag_llm.transport import Request, TransportSettings, get_backend
from rag_llm.transport._pool_model import PoolModel
from rag_llm.transport._pyreqwest import split_lines

# Each run closes an async client just before the interpreter exits: with pyreqwest 0.15 and
# nothing waiting out the runtime's wind-down, ~1 run of 3 aborted here ("PyGILState_Release").
EXIT_RUNS = 8
CONFIG = {"type": "openai", "model": "m", "api_key": KEY, "base_url": "http://127.0.0.1:9/v1",
          "transport": "pyreqwest"}
EXIT_SCRIPT = textwrap.dedent("""
    import asyncio
    from pyreqwest.client import ClientBuilder
    from rag_llm.testing import UpstreamServer
    from rag_llm.transport._pyreqwest import client_closed

    async def main(url):
        client = ClientBuilder().build()
        await client.post(url).body_bytes(b"{}").build().send()
        await client.close()
        client_closed()  # what the transports call on close

    # The server's thread still running at exit is what made the abort likely.
    server = UpstreamServer().__enter__()
    asyncio.run(main(server.base_url + "/embeddings"))
""")


def settings(**limits: Any) -> TransportSettings:
    config = ProviderConfig.from_mapping({**CONFIG, **limits})
    return TransportSettings("openai", config.limits, config.timeouts, False, True)


def test_the_interpreter_exits_cleanly_right_after_an_async_client_closed() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    codes = [subprocess.run([sys.executable, "-c", EXIT_SCRIPT], env=env,
                            capture_output=True, timeout=30).returncode
             for _ in range(EXIT_RUNS)]
    assert codes == [0] * EXIT_RUNS


def test_sequential_calls_estimate_the_one_connection_the_server_counted(
    upstream: UpstreamServer,
) -> None:
    with create_provider("embedding", provider_config(upstream, transport="pyreqwest")) as p:
        for i in range(20):
            p.embed([f"text {i}"])
        stats = p.pool_stats().clients[0].stats
    assert upstream.connections_accepted == 1
    assert (stats.connections_opened, stats.connections_estimated) == (1, True)


async def test_a_burst_estimates_the_connections_the_server_counted(
    upstream: UpstreamServer,
) -> None:
    upstream.delay = 0.05  # the ten calls overlap: ten connections
    config = provider_config(upstream, transport="pyreqwest")
    async with create_provider("embedding", config) as p:
        await asyncio.gather(*(p.aembed([f"t{i}"]) for i in range(10)))
        await asyncio.gather(*(p.aembed([f"t{i}"]) for i in range(10)))
        client = p.pool_stats().clients[1]
    assert upstream.connections_accepted == 10
    assert (client.stats.connections_opened, client.idle) == (10, 10)


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_gets_a_clear_error_and_the_parent_keeps_its_connection(
    upstream: UpstreamServer,
) -> None:
    with create_provider("embedding", provider_config(upstream, transport="pyreqwest")) as p:
        p.embed(["parent"])
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                p.embed(["child"])
            except errors.ConfigError as exc:
                code = 0 if "spawn" in str(exc) else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        p.embed(["parent again"])
    assert (upstream.connections_accepted, upstream.requests_served) == (1, 2)


def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import rag_llm.config._provider as provider_module

    real = provider_module.importlib.util.find_spec
    monkeypatch.setattr(provider_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyreqwest" else real(name, *a))
    with pytest.raises(errors.ConfigError, match=r"pip install 'rag-llm\[native\]'"):
        ProviderConfig.from_mapping(CONFIG)


@pytest.mark.parametrize(("fault", "expected"), [
    (Fault(action="close"), errors.ConnectionLostError),
    (Fault(action="reset"), errors.ConnectionLostError),
    (Fault(delay=1.0), errors.ReadTimeoutError),
])
async def test_failures_map_to_the_same_errors_as_the_other_transports(
    upstream: UpstreamServer, fault: Fault, expected: type[errors.RagLLMError],
) -> None:
    upstream.add_fault(fault)
    transport = get_backend("pyreqwest").open_async(
        settings(read_timeout=0.3), ClientStats("openai", "async", "pyreqwest"))
    try:
        with pytest.raises(expected) as caught:
            await transport.send(Request("POST", f"{upstream.base_url}/embeddings",
                                         {"authorization": f"Bearer {KEY}"}, b"{}",
                                         endpoint=upstream.base_url))
    finally:
        await transport.aclose()
    assert KEY not in str(caught.value)


def test_a_refused_connection_is_a_connect_error() -> None:
    from support import closed_port

    transport = get_backend("pyreqwest").open_sync(
        settings(), ClientStats("openai", "sync", "pyreqwest"))
    try:
        with pytest.raises(errors.ConnectError):
            transport.send(Request("GET", f"http://127.0.0.1:{closed_port()}/v1/models", {}))
    finally:
        transport.close()


def test_lines_are_split_across_chunks() -> None:
    buffer = bytearray()
    assert split_lines(buffer, b"data: {\"a\"") == []
    assert split_lines(buffer, b": 1}\r\n\r\ndata: [DO") == ['data: {"a": 1}', ""]
    assert split_lines(buffer, b"NE]\n") == ["data: [DONE]"]
    assert buffer == b""


def test_the_model_expires_idle_connections_and_counts_failures() -> None:
    stats = ClientStats("openai", "async", "pyreqwest")
    model = PoolModel(stats, max_idle=1, expiry=0.05)
    assert model.start() is False
    model.end(ok=True)
    assert model.start() is True  # the idle one is reused
    model.end(ok=False)  # a failed call loses its connection
    model.start()
    model.end(ok=True)
    time.sleep(0.06)
    model.prune()
    snapshot = stats.snapshot()
    assert snapshot.connections_opened == 2
    assert snapshot.connections_closed == {"error": 1, "expired": 1}


def test_the_exporter_names_estimated_connection_figures_apart(upstream: UpstreamServer) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from rag_llm.metrics import PoolCollector

    with create_provider("embedding", provider_config(upstream, transport="pyreqwest")) as p:
        p.embed(["x"])
        registry = CollectorRegistry()
        registry.register(PoolCollector(pools=lambda: [p.pool_stats()],
                                        counters=lambda: [c.stats for c in
                                                          p.pool_stats().clients]))
        text = generate_latest(registry).decode()
    assert 'rag_llm_connections_opened_estimated_total{client="sync",provider="openai"} 1.0' in text
    assert 'rag_llm_pool_connections_estimated{client="sync",provider="openai",state="idle"} 1.0' \
        in text
    # The sync client's figures are only under the estimated names.
    assert 'rag_llm_connections_opened_total{client="sync"' not in text
    assert 'rag_llm_pool_connections{client="sync"' not in text


async def test_opening_and_closing_clients_leaves_no_thread_behind(
    upstream: UpstreamServer,
) -> None:
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    async def one_round() -> None:
        config = provider_config(upstream, transport="pyreqwest")
        async with create_provider("embedding", config) as p:
            await p.aembed(["x"])
            p.embed(["y"])  # the sync client, from this thread

    await one_round()  # pyreqwest's runtime starts once per process
    before = threads()
    for _ in range(10):
        await one_round()
    assert threads() == before
    assert upstream.connections_accepted == 22  # an async and a sync client per round


def test_a_request_repr_masks_the_key(upstream: UpstreamServer) -> None:
    from pyreqwest.client import SyncClientBuilder

    from rag_llm.transport._pyreqwest import _build

    with SyncClientBuilder().build() as client:
        built = _build(client, Request("POST", f"{upstream.base_url}/embeddings",
                                       {"Authorization": f"Bearer {KEY}", "api-key": KEY}),
                       streamed=False)
        assert KEY not in repr(built)
        assert KEY not in repr(built.headers)
