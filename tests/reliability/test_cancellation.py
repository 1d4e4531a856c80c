"""Reliability under a cancellation storm: a thousand calls through two providers' real
pools, most cancelled at a seeded random moment, then the pools, the server and the
process held to their baseline.

| scenario                                | criterion                                        |
|-----------------------------------------|--------------------------------------------------|
| 1,000 aembed / achat / astream calls,   | every call not cancelled returns its answer;     |
| 16 at once, max_connections 4,          | cancellations land at every stage (slot, budget, |
| Latency 2 ms each way; 85 % cancelled   | connect, send (httpx2), head, mid-stream), >= 5  |
| 0-50 ms in, a fifth of the streams 0-10 | each; then no slot or connection held, the       |
| ms after their first delta, a fifth     | server's and the proxy's open connections == the |
| left unclosed; aiohttp and httpx2       | pools' idle ones, the only new task the reaper;  |
|                                         | 8 calls of 0.3 s reach the server 4 at a time;   |
|                                         | after aclose(), the process's fds and tasks are  |
|                                         | the baseline's, no connection open at the server |
|                                         | or the proxy, no unretrieved task exception      |
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import time
import types
from typing import Any

import pytest
from wirekit import settings, until

from rag_llm import create_provider
from rag_llm.testing import FaultProxy, Latency, UpstreamServer

pytestmark = pytest.mark.reliability

CALLS, IN_FLIGHT, MAX_CONNECTIONS = 1000, 16, 4
CANCELLED_SHARE, CANCEL_WITHIN = 0.85, 0.05


def _chain(obj: Any) -> list[str]:
    """The qualified names of the coroutines and generators ``obj`` awaits, outermost first.

    An async generator's ``asend`` object exposes no generator; the garbage collector's
    referents do.
    """
    names: list[str] = []
    for _ in range(200):
        if isinstance(obj, types.CoroutineType):
            names.append(obj.cr_code.co_qualname)
            obj = obj.cr_await
        elif isinstance(obj, types.AsyncGeneratorType):
            names.append(obj.ag_code.co_qualname)
            obj = obj.ag_await
        elif isinstance(obj, types.GeneratorType):
            names.append(obj.gi_code.co_qualname)
            obj = obj.gi_yieldfrom
        elif obj is None or isinstance(obj, asyncio.Future):
            break
        else:
            obj = next((r for r in gc.get_referents(obj) if isinstance(
                r, types.CoroutineType | types.AsyncGeneratorType | types.GeneratorType)), None)
    return names


# The stage a suspended call is in, by the frames it awaits through (aiohttp's, httpcore's
# and rag-llm's names), the first that matches.
_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pool slot", ("EndpointLimits.admit",)),
    ("connection budget", ("ConnectionBudget.take",)),
    ("connecting", ("create_connection", "_create_connection", "connect_tcp", "start_tls")),
    ("sending", ("_send_request_headers", "_send_request_body", "ClientRequest.send",
                 "write_headers", "write_bytes")),
    ("reading the head", ("_receive_response_headers", "ClientResponse.start")),
    ("first token", ("^_open",)),  # rag-llm's, not a transport's
    ("mid-stream", ("aiter_lines",)),
    ("reading the body", ("read",)),
    ("closing", ("aclose",)),
)


def _stage(task: asyncio.Task[Any]) -> str:
    chain = _chain(task.get_coro())
    if len(chain) <= 1:
        return "not started"
    for stage, marks in _STAGES:
        for name in chain:
            if any(name == mark.lstrip("^") or (mark[0] != "^" and name.endswith("." + mark))
                   for mark in marks):
                return stage
    return "other: " + " > ".join(chain[-8:])


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))



class _Storm:
    """Runs ``CALLS`` calls ``IN_FLIGHT`` at a time, cancelling most at a seeded moment."""

    def __init__(self, provider: Any, embedder: Any, upstream: UpstreamServer,
                 seed: int) -> None:
        self.llm = provider
        self.embedder = embedder
        self.upstream = upstream
        self.rng = random.Random(seed)  # a reproducible storm
        self.stages: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.wrong: list[tuple[str, object]] = []

    async def call(self, kind: str, i: int) -> None:
        text = f"w{i} a b c d e f"
        if kind == "aembed":
            vectors = await self.embedder.aembed([text])
            if vectors != [self.upstream.expected_embedding(text)]:
                self.wrong.append((kind, vectors))
            return
        question = [{"role": "user", "content": text}]
        if kind == "achat":
            answer = await self.llm.achat(question)
        else:
            deltas = []
            async for delta in self.llm.astream(question):
                deltas.append(delta)
                if kind == "astream, left after one delta":
                    return  # the generator is left to the loop's finalizer
                if kind == "astream, cancelled mid-way" and len(deltas) == 1:
                    task = asyncio.current_task()
                    assert task is not None
                    asyncio.get_running_loop().call_later(
                        self.rng.uniform(0, 0.01), self.cancel, task)
            answer = "".join(deltas)
        if answer != "echo: " + text:
            self.wrong.append((kind, answer))

    def cancel(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self.stages[_stage(task)] += 1
            task.cancel()

    def settled(self, kind: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.outcomes["cancelled"] += 1
        elif task.exception() is not None:
            self.wrong.append((kind, task.exception()))
        else:
            self.outcomes["completed"] += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        kinds = ["aembed", "achat", "astream", "astream, cancelled mid-way",
                 "astream, left after one delta"]
        gate = asyncio.Semaphore(IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        for i in range(CALLS):
            await gate.acquire()
            kind = self.rng.choice(kinds)
            task = loop.create_task(self.call(kind, i))
            running.add(task)
            task.add_done_callback(lambda t, k=kind: (running.discard(t), gate.release(),
                                                      self.settled(k, t)))
            if self.rng.random() < CANCELLED_SHARE:
                loop.call_later(self.rng.uniform(0, CANCEL_WITHIN), self.cancel, task)
        while running:
            await asyncio.wait(set(running))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc (Linux)")
@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
async def test_a_cancellation_storm_leaks_no_slot_connection_task_or_fd(
    upstream: UpstreamServer, proxied: FaultProxy, transport: str,
) -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    upstream.stream_interval = 0.002  # a stream of 8 deltas takes about 16 ms
    # Delays on the wire both ways, so that a cancellation finds calls connecting,
    # sending and reading, not only waiting for a slot.
    proxied.add(Latency(0.002, jitter=0.001))
    proxied.add(Latency(0.002, jitter=0.001, direction="upstream"))
    gc.collect()
    fds_before, tasks_before = _fds(), asyncio.all_tasks()
    # One idle connection kept: the others close as calls end, so that calls connect
    # again all through the storm.
    config = settings(proxied.base_url, transport=transport, max_connections=MAX_CONNECTIONS,
                      max_keepalive_connections=1)
    llm: Any = create_provider("llm", config)
    embedder: Any = create_provider("embedding", config)
    try:
        await _storm_then_full_concurrency(llm, embedder, upstream, proxied, transport,
                                           tasks_before, fds_before)
    finally:
        await llm.aclose()
        await embedder.aclose()
    closed = await until(lambda: _fds() == fds_before and upstream.connections_open == 0
                         and proxied.connections_open == 0, within=3.0)
    gc.collect()
    await asyncio.sleep(0.05)  # callbacks of the finalizers run
    fds_after = _fds()
    tasks_after = asyncio.all_tasks()
    print(f"{transport}: after aclose(), fds {fds_before} -> {fds_after}, "
          f"tasks {len(tasks_before)} -> {len(tasks_after)}")
    assert closed, (_fds(), fds_before, upstream.connections_open, proxied.connections_open)
    assert fds_after == fds_before
    assert tasks_after == tasks_before
    assert unretrieved == []


async def _storm_then_full_concurrency(
    llm: Any, embedder: Any, upstream: UpstreamServer, proxied: FaultProxy, transport: str,
    tasks_before: set[asyncio.Task[Any]], fds_before: int,
) -> None:
    storm = _Storm(llm, embedder, upstream, seed=20261203)
    started = time.monotonic()
    await storm.run()
    took = time.monotonic() - started
    pools = [llm.pool, embedder.pool]
    idle = lambda: sum(c.idle for p in (llm, embedder)  # noqa: E731
                       for c in p.pool_stats().clients if c.client == "async")
    settled = await until(lambda: upstream.connections_open == idle()
                          and proxied.connections_open == idle()
                          and sum(p.limits.connections.open for p in pools) == idle(),
                          within=3.0)
    idle_now, fds_now = idle(), _fds()
    extra_tasks = {t.get_name() for t in asyncio.all_tasks() - tasks_before}
    print(f"\n{transport}: {CALLS} calls in {took:.2f} s, {dict(storm.outcomes)}; "
          f"cancelled at {dict(storm.stages.most_common())}; fds {fds_before} -> {fds_now} "
          f"with {idle_now} idle connections; new tasks {sorted(extra_tasks)}")
    assert storm.wrong == []
    assert sum(storm.outcomes.values()) == CALLS
    assert storm.outcomes["cancelled"] >= 0.7 * CALLS
    # The storm reached every stage of a call, not only the wait for a slot (aiohttp
    # writes a small request without suspending: no cancellation can land there).
    stages = ["pool slot", "connection budget", "connecting", "reading the head", "mid-stream"]
    for stage in stages + (["sending"] if transport == "httpx2" else []):
        assert storm.stages[stage] >= 5, storm.stages
    assert not [s for s in storm.stages if s.startswith("other")], storm.stages
    assert settled, (upstream.connections_open, proxied.connections_open, idle())
    assert [(p.limits.requests.taken, p.limits.requests.waiting, p.limits.connections.wanted)
            for p in pools] == [(0, 0, 0), (0, 0, 0)]
    assert sum(c.active for p in (llm, embedder) for c in p.pool_stats().clients) == 0
    assert idle_now <= 2 * MAX_CONNECTIONS
    assert fds_now <= fds_before + 4 * idle_now  # the client's, two of the proxy, the server's
    assert extra_tasks <= {"rag_llm-pool-reaper-openai"}, extra_tasks

    # No slot lost and none gained: 8 calls of 0.3 s reach the server 4 at a time, in two
    # rounds (a third would take 0.9 s).
    delay = 0.3
    upstream.reset()
    upstream.delay = delay
    began = time.monotonic()
    answers = await asyncio.gather(*(llm.achat([{"role": "user", "content": f"c{i}"}])
                                     for i in range(8)))
    rounds = time.monotonic() - began
    upstream.delay = 0.0
    print(f"{transport}: 8 calls, {upstream.max_in_flight} at once, in {rounds:.3f} s")
    assert answers == [f"echo: c{i}" for i in range(8)]
    assert upstream.max_in_flight == MAX_CONNECTIONS
    assert 2 * delay <= rounds < 3 * delay, rounds
