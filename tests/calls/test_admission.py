"""max_connections and adaptive concurrency hold per endpoint, across event loops and threads.

One provider is called at once from several event loops (threads each running
``asyncio.run``) and from sync threads; the real server on 127.0.0.1 counts what it sees.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from support import PYREQWEST, provider_config

from rag_llm.errors import PoolTimeoutError
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import UpstreamServer

TRANSPORTS = ["httpx2", "aiohttp", "httpx", PYREQWEST]
LOOPS = 3
SYNC_THREADS = 2


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def embedder(server: UpstreamServer, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding", provider_config(server, **overrides))


def _from_loops_and_threads(provider: EmbeddingProvider, *, tasks_per_loop: int,
                            calls_per_task: int, calls_per_thread: int) -> list[int]:
    """Call ``provider`` from LOOPS event loops and SYNC_THREADS threads, all at once.

    Returns how many vectors each loop or thread got back.
    """
    start = threading.Barrier(LOOPS + SYNC_THREADS)

    async def loop_worker(n: int) -> int:
        async def task(t: int) -> int:
            got = 0
            for i in range(calls_per_task):
                got += len(await provider.aembed([f"loop {n} task {t} call {i}"]))
            return got

        return sum(await asyncio.gather(*(task(t) for t in range(tasks_per_loop))))

    def in_loop(n: int) -> int:
        start.wait(timeout=10)
        return asyncio.run(loop_worker(n))

    def in_thread(n: int) -> int:
        start.wait(timeout=10)
        return sum(len(provider.embed([f"thread {n} call {i}"]))
                   for i in range(calls_per_thread))

    jobs: list[Callable[[], int]] = [
        *(lambda n=n: in_loop(n) for n in range(LOOPS)),
        *(lambda n=n: in_thread(n) for n in range(SYNC_THREADS)),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result(timeout=120) for f in [pool.submit(job) for job in jobs]]


def test_max_connections_holds_across_event_loops_and_sync_threads(
    upstream: UpstreamServer, transport: str,
) -> None:
    upstream.delay = 0.02  # calls overlap: the cap, not the callers, limits connections
    with embedder(upstream, transport=transport, max_connections=2,
                  max_keepalive_connections=2, pool_timeout=60.0) as provider:
        got = _from_loops_and_threads(provider, tasks_per_loop=3, calls_per_task=3,
                                      calls_per_thread=6)
    assert got == [9] * LOOPS + [6] * SYNC_THREADS  # every call succeeded
    assert upstream.requests_served == 9 * LOOPS + 6 * SYNC_THREADS
    if transport == "pyreqwest":
        # hyper cannot be asked to close an idle connection for another client, so each
        # client keeps its own: across clients only the calls in flight are bounded.
        assert upstream.max_in_flight <= 2, upstream.max_in_flight
    else:
        assert upstream.max_concurrent_connections <= 2, upstream.max_concurrent_connections


def test_the_adaptive_limit_holds_across_event_loops_and_sync_threads(
    upstream: UpstreamServer,
) -> None:
    upstream.delay = 0.02
    # Starts at max_keepalive_connections (1); well below max_connections (50), so only
    # the adaptive gate limits calls in flight.
    with embedder(upstream, adaptive_concurrency=True, max_connections=50,
                  max_keepalive_connections=1, pool_timeout=60.0) as provider:
        got = _from_loops_and_threads(provider, tasks_per_loop=4, calls_per_task=2,
                                      calls_per_thread=4)
        admission = provider.router.primary.admission
        assert admission is not None
        limit = admission.limit.limit
    assert got == [8] * LOOPS + [4] * SYNC_THREADS
    # No call was dropped, so the limit only grew: its final value is its peak.
    assert limit < 50
    assert 1 <= upstream.max_in_flight <= limit, (upstream.max_in_flight, limit)


@pytest.mark.parametrize("holder", ["sync", "async"])
@pytest.mark.parametrize("waiter", ["sync", "async"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_a_waiter_on_another_client_gets_pool_timeout(
    upstream: UpstreamServer, holder: str, waiter: str, adaptive: bool,
) -> None:
    upstream.delay = 3.0
    with embedder(upstream, max_connections=1, max_keepalive_connections=1,
                  pool_timeout=0.3, adaptive_concurrency=adaptive) as provider:

        def hold() -> object:
            if holder == "sync":
                return provider.embed(["holds the only connection"])
            return asyncio.run(provider.aembed(["holds the only connection"]))

        def wait() -> tuple[BaseException | None, float]:
            started = time.monotonic()
            try:
                if waiter == "sync":
                    provider.embed(["waits for it"])
                else:
                    asyncio.run(provider.aembed(["waits for it"]))
            except PoolTimeoutError as exc:
                return exc, time.monotonic() - started
            return None, time.monotonic() - started

        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(hold)
            assert upstream.wait_until(lambda s: s.max_in_flight == 1, timeout=10)
            error, waited = pool.submit(wait).result(timeout=30)
            held.result(timeout=30)
    assert isinstance(error, PoolTimeoutError)
    assert "pool_timeout=0.3s" in str(error)
    assert "max_connections=1" in str(error)
    assert 0.25 <= waited < 2.9  # bounded by pool_timeout, not by the holder's call
    assert upstream.max_concurrent_connections == 1
