"""The OpenAI-compatible gateway's overhead: the openai SDK against nginx directly, and
through ``rag-llm serve`` whose providers point at the same nginx.

Both paths send the same calls with the same SDK client settings: embeddings of one text
(``encoding_format="float"``, so both answers are the same 1,536-float JSON) and a chat
completion. Measured per path and operation, repeats interleaved (direct, gateway, direct,
...): p50 latency at c=1 (the gateway's is reported as time added per call) and throughput
at c=16 and c=128 (the gateway's as a share of direct). nginx and the service run on one
CPU, this client on the other (``--no-pin``: no pinning); the service runs as
``python -m rag_llm.cli serve`` with log level warning and a service API key.

    python -m benchmarks.gateway [--calls 400] [--seconds 6] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks.payload import API_KEY, MODEL, TEXT
from benchmarks.processes import stop_process
from benchmarks.stats import percentile
from benchmarks.upstream import Nginx, free_port

__all__ = ["Figures", "main", "run"]

CHAT_MODEL: Final = "gpt-4o-mini"
SERVICE_KEY: Final = "sk-gateway-bench"
_START_TIMEOUT_S: Final = 30.0
_WARMUP_CALLS: Final = 50
Call = Callable[[Any], Awaitable[Any]]


def _embed(client: Any) -> Awaitable[Any]:
    made: Awaitable[Any] = client.embeddings.create(model=MODEL, input=TEXT,
                                                    encoding_format="float")
    return made


def _chat(client: Any) -> Awaitable[Any]:
    made: Awaitable[Any] = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": TEXT}])
    return made


OPERATIONS: Final[dict[str, Call]] = {"embeddings": _embed, "chat": _chat}


def _config(nginx_url: str, data_dir: Path) -> str:
    provider = f'type = "openai"\nbase_url = "{nginx_url}"\napi_key = "{API_KEY}"\n'
    return (f'[providers.embedding]\n{provider}model = "{MODEL}"\n'
            f'[providers.llm]\n{provider}model = "{CHAT_MODEL}"\n'
            '[logging]\nlevel = "warning"\n'
            f'[rag]\napi_key = "{SERVICE_KEY}"\ndata_dir = "{data_dir}"\n')


@contextlib.contextmanager
def serve(nginx_url: str, cpu: int | None) -> Iterator[tuple[str, int]]:
    """``rag-llm serve`` on a free port, its providers on ``nginx_url``; yields its /v1 URL
    and its process id."""
    workdir = Path(tempfile.mkdtemp(prefix="rag-llm-bench-gateway-"))
    config = workdir / "rag-llm.toml"
    config.write_text(_config(nginx_url, workdir / "data"))
    port = free_port()
    command = [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port),
               "--config", str(config)]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,  # noqa: S603
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = (workdir / "serve.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"rag-llm serve did not start:\n{tail}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1", process.pid
    finally:
        process.terminate()
        stop_process(process, grace=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def _latencies(client: Any, call: Call, calls: int) -> list[float]:
    for _ in range(_WARMUP_CALLS):
        await call(client)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        await call(client)
        seconds.append(time.perf_counter() - started)
    return seconds


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Cell:
    """One throughput cell: calls a second, and CPU seconds per call of this client and of
    the gateway process (0 on the direct path)."""

    rate: float
    client_cpu: float
    gateway_cpu: float


async def _throughput(client: Any, call: Call, concurrency: int, calls: int,
                      seconds: float, gateway_pid: int | None) -> Cell:
    """Calls a second from ``concurrency`` workers, until ``calls`` are made or time is up."""
    await asyncio.gather(*(call(client) for _ in range(concurrency)))  # open the connections
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while done < calls and time.perf_counter() < deadline:
            done += 1
            await call(client)

    gateway_before = process_cpu(gateway_pid) if gateway_pid else 0.0
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    client = (time.process_time() - client_before) / done
    gateway = (process_cpu(gateway_pid) - gateway_before) / done if gateway_pid else 0.0
    return Cell(done / elapsed, client, gateway)


@dataclass
class Figures:
    """Per (path, operation): c=1 p50s (seconds) and throughput cells by concurrency, per
    repeat."""

    p50: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cells: dict[tuple[str, str, int], list[Cell]] = field(default_factory=dict)


async def _measure(base_url: str, key: str, path: str, figures: Figures, calls: int,
                   seconds: float, levels: Sequence[int], gateway_pid: int | None) -> None:
    import openai

    def client() -> Any:
        # A new client per cell: no connection left idle from the cell before, which the
        # server may close (uvicorn after 5 s) just as the client reuses it.
        return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)

    for name, call in OPERATIONS.items():
        async with client() as sdk:
            latencies = await _latencies(sdk, call, calls)
        figures.p50.setdefault((path, name), []).append(percentile(latencies, 50))
        for level in levels:
            async with client() as sdk:
                cell = await _throughput(sdk, call, level, calls * 5, seconds, gateway_pid)
            figures.cells.setdefault((path, name, level), []).append(cell)


def run(*, calls: int, seconds: float, repeats: int, levels: Sequence[int] = (16, 128),
        pin: bool = True) -> Figures:
    """Start nginx and the service, measure both paths ``repeats`` times, interleaved."""
    if pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
        server_cpu: int | None = 1
    else:
        server_cpu = None
    figures = Figures()
    with Nginx(cpu=server_cpu) as nginx, \
            serve(nginx.base_url("http"), server_cpu) as (gateway, pid):
        paths = {"direct": (nginx.base_url("http"), API_KEY, None),
                 "gateway": (gateway, SERVICE_KEY, pid)}
        for repeat in range(repeats):
            order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
            for path in order:
                url, key, gateway_pid = paths[path]
                asyncio.run(_measure(url, key, path, figures, calls, seconds, levels,
                                     gateway_pid))
    return figures


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cells(figures: Figures, path: str, name: str, level: int) -> list[Cell]:
    return figures.cells.get((path, name, level), [])


def report(figures: Figures, levels: Sequence[int]) -> str:
    """The table: p50 direct/gateway/added at c=1, throughput and ratio per level, and CPU
    per call at the first level: this client's on each path, and the gateway process's."""
    head = ["operation", "p50 direct", "p50 gateway", "added"]
    for level in levels:
        head += [f"c={level} direct", f"c={level} gateway", "ratio"]
    head += ["client CPU/call", "gateway CPU/call"]
    rows = [head]
    for name in OPERATIONS:
        direct = _median(figures.p50.get(("direct", name), []))
        through = _median(figures.p50.get(("gateway", name), []))
        row = [name, f"{direct * 1000:.3f} ms", f"{through * 1000:.3f} ms",
               f"{(through - direct) * 1000:+.3f} ms"]
        for level in levels:
            d = _median([c.rate for c in _cells(figures, "direct", name, level)])
            g = _median([c.rate for c in _cells(figures, "gateway", name, level)])
            row += [f"{d:,.0f}/s", f"{g:,.0f}/s", f"{g / d:.0%}" if d else "n/a"]
        first = levels[0]
        client = _median([c.client_cpu for c in _cells(figures, "direct", name, first)])
        gateway = _median([c.gateway_cpu for c in _cells(figures, "gateway", name, first)])
        row += [f"{client * 1e6:,.0f} us", f"{gateway * 1e6:,.0f} us"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _server_stack() -> str:
    """What uvicorn will pick: httptools and uvloop when installed (``uvicorn[standard]``)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn http={http} loop={loop}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="c=1 calls per repeat")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="time bound of each throughput cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 calls, 2 s, 1 repeat")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.seconds, args.repeats = 100, 2.0, 1
    levels = (16, 128)
    figures = run(calls=args.calls, seconds=args.seconds, repeats=args.repeats,
                  levels=levels, pin=not args.no_pin)
    print(f"openai SDK -> nginx directly vs through rag-llm serve; median of {args.repeats} "
          f"repeat(s), c=1 p50 over {args.calls} calls, throughput cells <= {args.seconds:g} s, "
          f"{_server_stack()}, {os.cpu_count()} CPUs{'' if args.no_pin else ', pinned'}")
    print(report(figures, levels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
