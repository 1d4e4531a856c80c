"""Reliability at shutdown: 100 streams in flight when the application closes, through the
service locator and through the real service under SIGTERM.

| scenario                                  | criterion                                      |
|-------------------------------------------|------------------------------------------------|
| 100 streams in flight, 50 due to end in   | the 50 short ones finish whole; the 50 long    |
| 0.3 s, 50 in 2.2 s; ServiceLocator        | ones are cancelled at the drain deadline;      |
| cleanup(), drain_timeout 0.8 s            | cleanup() takes 0.8-1.1 s; then no socket of   |
|                                           | the process to the upstream, none open at it   |
| same through `rag-llm serve`, SIGTERM     | the short ones end with [DONE]; the long ones  |
|                                           | are cut at the drain rounded up to a second;   |
|                                           | the process exits within 1 s after that,       |
|                                           | having closed its pools; the upstream sees     |
|                                           | every connection closed by the client          |
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import closed_port
from wirekit import KEY, sockets_to, until

from rag_llm import ServiceLocator
from rag_llm.config import Settings
from rag_llm.testing import UpstreamServer

pytestmark = pytest.mark.reliability

STREAMS, INTERVAL, DRAIN = 100, 0.05, 0.8
SHORT, LONG = "a b", " ".join(f"w{n}" for n in range(40))
LONG_DELTAS = 42  # "echo: ", "s1 ", then a delta per word
GRACE = math.ceil(DRAIN)  # what uvicorn gives requests in flight: whole seconds


def _question(i: int) -> list[dict[str, str]]:
    # Even streams are short (6 events, about 0.3 s), odd ones long (about 2.2 s).
    return [{"role": "user", "content": f"s{i} {SHORT if i % 2 == 0 else LONG}"}]


def _answer(i: int) -> str:
    return "echo: " + _question(i)[0]["content"]



async def test_cleanup_drains_the_streams_that_end_in_time_and_cancels_the_rest(
    upstream: UpstreamServer,
) -> None:
    upstream.stream_interval = INTERVAL
    locator = ServiceLocator(Settings(providers={"llm": {
        "type": "openai", "model": "m", "api_key": KEY, "base_url": upstream.base_url,
        "drain_timeout": DRAIN}}))
    llm = locator.get("llm")
    received: list[list[str]] = [[] for _ in range(STREAMS)]
    ended: dict[int, float] = {}

    async def consume(i: int) -> None:
        try:
            async for delta in llm.astream(_question(i)):
                received[i].append(delta)
        finally:
            ended[i] = time.monotonic()

    tasks = [asyncio.create_task(consume(i)) for i in range(STREAMS)]
    assert await until(lambda: all(received))  # every stream has its first delta
    assert upstream.connections_open == STREAMS
    started = time.monotonic()
    with capture_logs() as logs:
        await locator.cleanup()
    took = time.monotonic() - started
    sockets_after = sockets_to(upstream.port)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    closed = await until(lambda: upstream.connections_open == 0)

    finished = [i for i, o in enumerate(outcomes) if o is None]
    cancelled = [i for i, o in enumerate(outcomes) if isinstance(o, asyncio.CancelledError)]
    last_short = max(ended[i] for i in finished) - started
    first_cut = min(ended[i] for i in cancelled) - started
    print(f"\ncleanup() took {took:.3f} s (drain_timeout {DRAIN} s); {len(finished)} streams "
          f"finished, the last {last_short:.3f} s in; {len(cancelled)} cancelled from "
          f"{first_cut:.3f} s, after {min(len(received[i]) for i in cancelled)}-"
          f"{max(len(received[i]) for i in cancelled)} of {LONG_DELTAS} deltas; sockets to "
          f"the upstream after: {sockets_after}; open at it: {upstream.connections_open}")
    assert finished == list(range(0, STREAMS, 2))
    assert all("".join(received[i]) == _answer(i) for i in finished)
    assert cancelled == list(range(1, STREAMS, 2))
    assert all(1 <= len(received[i]) < LONG_DELTAS for i in cancelled)
    assert last_short < DRAIN
    assert first_cut >= DRAIN
    assert DRAIN <= took < DRAIN + 0.3, took
    assert sockets_after == 0
    assert closed, upstream.connections_open
    assert {"event": "provider_calls_cancelled", "provider": "openai", "calls": STREAMS // 2,
            "log_level": "warning"} in logs


async def _open_stream(port: int, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST a streamed completion to the service; return once its first event arrived."""
    body = json.dumps({"model": "llm", "messages": _question(i), "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    await reader.readuntil(b"data: ")
    return reader, writer


async def _rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ) -> tuple[bytes, float]:
    """Every byte left of a response, and when it ended: the service closes after a
    shutdown."""
    try:
        rest = await reader.read()
    except ConnectionResetError:
        rest = b""
    finally:
        writer.close()
    return rest, time.monotonic()


def _serve(port: int, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``rag-llm serve`` on ``port`` with ``config``, its output going to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port),
             "--config", str(config)], env=env, stdout=output, stderr=subprocess.STDOUT)


def _wait_for_service(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


async def test_sigterm_drains_the_service_streams_then_cuts_the_rest_and_exits(
    upstream: UpstreamServer, tmp_path: Path,
) -> None:
    upstream.stream_interval = INTERVAL
    config = tmp_path / "rag-llm.toml"
    config.write_text(
        f'[providers.llm]\ntype = "openai"\nmodel = "m"\nbase_url = "{upstream.base_url}"\n'
        f'api_key = "{KEY}"\ndrain_timeout = {DRAIN}\n'
        f'[rag]\ndata_dir = "{tmp_path / "data"}"\n')
    port = closed_port()
    log = tmp_path / "serve.log"
    process = _serve(port, config, log)
    try:
        _wait_for_service(port, process, log)
        streams = await asyncio.gather(*(_open_stream(port, i) for i in range(STREAMS)))
        assert upstream.connections_open == STREAMS
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rests = [asyncio.create_task(_rest(*stream)) for stream in streams]
        exit_code = await asyncio.to_thread(process.wait, DRAIN + 10)
        exited = time.monotonic() - started
        ends = await asyncio.gather(*rests)
        closed = await until(lambda: upstream.connections_open == 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output_text = log.read_text()
    finished = [i for i, (body, _) in enumerate(ends) if b"data: [DONE]" in body]
    cut_at = sorted(at - started for i, (_, at) in enumerate(ends) if i not in finished)
    last_done = max(ends[i][1] for i in finished) - started
    print(f"\nserve: {len(finished)} streams ended with [DONE], the last {last_done:.3f} s "
          f"after SIGTERM; {len(cut_at)} cut {cut_at[0]:.3f}-{cut_at[-1]:.3f} s after it; the "
          f"process exited after {exited:.3f} s (code {exit_code}); open at the upstream "
          f"after: {upstream.connections_open}")
    assert exit_code in (0, -signal.SIGTERM), output_text  # uvicorn re-raises the signal
    assert finished == list(range(0, STREAMS, 2))
    assert last_done < DRAIN
    assert cut_at[0] >= GRACE, cut_at  # cancelled at uvicorn's grace, the drain rounded up
    assert exited < GRACE + 1.0, exited
    assert closed, upstream.connections_open
    assert upstream.connections_closed_by_client == STREAMS
    assert "service_locator_cleanup_success" in output_text
