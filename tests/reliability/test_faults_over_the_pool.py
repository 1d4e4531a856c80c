"""Reliability over the real pool and real sockets: FaultProxy between a provider and an
UpstreamServer, each scenario held to a criterion in numbers.

| scenario                         | criterion                                                  |
|----------------------------------|------------------------------------------------------------|
| RST on 10 % of connections       | >= 99.9 % of 2,000 embedding calls succeed (retries on)    |
| RST on 10 % of streams, mid-way  | no stream is sent twice; each broken one keeps its text    |
| 1-7 byte TCP segments            | SSE bytes and deltas identical to a run without the proxy  |
| blackhole                        | the call fails by its deadline + 0.1 s                     |
| connection cut mid-stream        | StreamInterruptedError holding exactly the text before it  |
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import Any

import pytest
from support import PYREQWEST
from wirekit import ANSWER, FAST_RETRY, QUESTION, settings

from rag_llm import create_provider, errors
from rag_llm.testing import Blackhole, FaultProxy, LimitData, ResetPeer, Slicer, UpstreamServer

pytestmark = pytest.mark.reliability


def _settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    # No idle connection is kept, so every call opens a connection and draws its faults.
    return settings(base_url, **{"max_keepalive_connections": 0, **overrides})


def _raw_stream(port: int, messages: list[dict[str, str]], sliced: bool = False) -> bytes:
    """One streamed chat completion over a plain socket: every byte of the response."""
    body = json.dumps({"model": "m", "messages": messages, "stream": True}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = []
        while chunk := sock.recv(65536):
            received.append(chunk)
    return b"".join(received)


def _offset_into_event(raw: bytes, n: int, into: int = 20) -> int:
    """The byte offset ``into`` bytes past the start of the ``n``-th SSE event (0-based)."""
    return [m.start() for m in re.finditer(rb"data: ", raw)][n] + into


def _sse(raw: bytes) -> tuple[bytes, bytes]:
    """(the response head without per-connection headers, the de-chunked SSE bytes), with
    the completion id and timestamp, which differ between two runs, made constant."""
    head, _, chunked = raw.partition(b"\r\n\r\n")
    head = re.sub(rb"x-upstream-[a-z-]+: \d+\r\n", b"", head + b"\r\n")
    body, rest = b"", chunked
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    body = re.sub(rb'"id":"chatcmpl-\d+","created":\d+', b'"id":"X","created":0', body)
    return head, body


async def test_resets_at_ten_percent_leave_999_in_1000_calls_succeeding(
    upstream: UpstreamServer, proxied: FaultProxy,
) -> None:
    proxied.add(ResetPeer(probability=0.1))
    # With 10 % of connections reset, three attempts fail one call in 1,000 on average, which
    # is the criterion itself; four make it one in 10,000.
    retry = {**FAST_RETRY, "max_attempts": 4}
    # A reset fails in about a millisecond, a success takes the server's time, so at 16 calls
    # in flight the failures finish bunched together and trip the default breaker (5 in a
    # row); the breaker is not what this scenario measures.
    breaker = {"consecutive_failures": 20}
    calls, concurrency = 2000, 16
    gate = asyncio.Semaphore(concurrency)
    failures: list[BaseException] = []

    async def call(i: int) -> None:
        async with gate:
            try:
                assert await provider.aembed([f"text {i}"]) == [upstream.expected_embedding(
                    f"text {i}")]
            except errors.RagLLMError as exc:
                failures.append(exc)

    async with create_provider("embedding", _settings(
            proxied.base_url, retry=retry, circuit_breaker=breaker)) as provider:
        await asyncio.gather(*(call(i) for i in range(calls)))
    resets = proxied.faults_applied.get("reset_peer", 0)
    assert (calls - len(failures)) / calls >= 0.999, failures
    assert 0.07 * calls <= resets <= 0.13 * calls  # the fault really was injected
    assert proxied.connections_accepted >= calls + resets - len(failures)
    assert len(upstream.requests) == calls - len(failures)  # a reset request never arrived


async def test_streams_reset_after_their_first_bytes_are_not_sent_again(
    upstream: UpstreamServer, proxied: FaultProxy,
) -> None:
    upstream.stream_interval = 0.002  # events in separate reads, as a model server sends them
    cut = _offset_into_event(_raw_stream(upstream.port, QUESTION), 2)
    upstream.reset()
    proxied.add(ResetPeer(probability=0.1, after_bytes=cut, direction="downstream"))
    streams = 300
    gate = asyncio.Semaphore(8)
    interrupted: list[tuple[errors.StreamInterruptedError, str]] = []

    async def stream() -> None:
        async with gate:
            deltas = []
            try:
                async for delta in llm.astream(QUESTION):
                    deltas.append(delta)
            except errors.StreamInterruptedError as exc:
                interrupted.append((exc, "".join(deltas)))
            else:
                assert "".join(deltas) == ANSWER

    async with create_provider("llm", _settings(proxied.base_url)) as llm:
        await asyncio.gather(*(stream() for _ in range(streams)))
    assert len(upstream.requests) == streams  # nothing was retried
    assert len(interrupted) == proxied.faults_applied["reset_peer"] >= 10
    assert {(exc.received, seen) for exc, seen in interrupted} == {("echo: one ", "echo: one ")}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2", PYREQWEST])
async def test_tiny_segments_leave_the_stream_byte_identical(
    upstream: UpstreamServer, proxied: FaultProxy, transport: str,
) -> None:
    direct = _sse(_raw_stream(upstream.port, QUESTION))
    direct_chunks = [c async for c in _chunks(upstream.base_url, transport)]
    proxied.add(Slicer(size=1, max_size=7, direction="downstream"))
    proxied.add(Slicer(size=1, max_size=7, direction="upstream"))
    sliced = await asyncio.to_thread(_raw_stream, proxied.port, QUESTION)
    assert _sse(sliced) == direct
    sliced_chunks = [c async for c in _chunks(proxied.base_url, transport)]
    assert sliced_chunks == direct_chunks
    async with create_provider("llm", _settings(proxied.base_url, transport=transport)) as llm:
        for n in range(1, 6):
            question = [{"role": "user", "content": " ".join(["wörd"] * n * 7)}]
            deltas = [d async for d in llm.astream(question)]
            assert "".join(deltas) == "echo: " + question[0]["content"]
            assert len(deltas) == n * 7 + 1
    assert proxied.faults_applied["slicer"] >= 2 * 7


async def _chunks(base_url: str, transport: str) -> Any:
    """The stream's chunk dicts, with the id and timestamp made constant."""
    async with create_provider("llm", _settings(base_url, transport=transport)) as llm:
        async for chunk in llm.astream_chunks(QUESTION):
            yield {**chunk, "id": "X", "created": 0}


@pytest.mark.parametrize("call", ["embed", "aembed", "astream"])
async def test_a_blackhole_fails_the_call_by_its_deadline(
    upstream: UpstreamServer, proxied: FaultProxy, call: str,
) -> None:
    proxied.add(Blackhole())
    deadline = 0.5
    kind = "llm" if call == "astream" else "embedding"
    provider: Any = create_provider(kind, _settings(proxied.base_url, deadline=deadline))
    started = time.monotonic()
    with pytest.raises(errors.RequestTimeoutError):
        await _call(provider, call)
    took = time.monotonic() - started
    await provider.aclose()
    provider.close()
    assert deadline - 0.05 <= took <= deadline + 0.1, took
    assert upstream.requests == []


async def _call(provider: Any, call: str) -> None:
    if call == "embed":
        await asyncio.to_thread(provider.embed, ["x"])
    elif call == "aembed":
        await provider.aembed(["x"])
    else:
        async for _ in provider.astream(QUESTION):
            pass


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2", PYREQWEST])
async def test_a_cut_mid_stream_raises_with_the_text_before_it(
    upstream: UpstreamServer, proxied: FaultProxy, transport: str,
) -> None:
    upstream.stream_interval = 0.002
    cut = _offset_into_event(_raw_stream(upstream.port, QUESTION), 4)
    upstream.reset()
    proxied.add(LimitData(cut))
    deltas = []
    async with create_provider("llm", _settings(proxied.base_url, transport=transport)) as llm:
        with pytest.raises(errors.StreamInterruptedError) as caught:  # noqa: PT012
            async for delta in llm.astream(QUESTION):
                deltas.append(delta)
    assert caught.value.received == "".join(deltas) == "echo: one two three "
    assert len(upstream.requests) == 1
    assert proxied.faults_applied == {"limit_data": 1}


def test_a_cut_mid_stream_raises_with_the_text_before_it_sync(
    upstream: UpstreamServer, proxied: FaultProxy,
) -> None:
    upstream.stream_interval = 0.002
    cut = _offset_into_event(_raw_stream(upstream.port, QUESTION), 3)
    upstream.reset()
    proxied.add(LimitData(cut))
    deltas = []
    with (create_provider("llm", _settings(proxied.base_url)) as llm,  # noqa: PT012
          pytest.raises(errors.StreamInterruptedError) as caught):
        for delta in llm.stream(QUESTION):
            deltas.append(delta)
    assert caught.value.received == "".join(deltas) == "echo: one two "
    assert len(upstream.requests) == 1
