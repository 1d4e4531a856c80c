"""Load loops and measurements that run inside a worker: bounded in requests and in seconds.

A cell opens a fresh client, warms it up (one wave of ``concurrency`` requests at least, so
pooled clients hold their connections), then measures ``concurrency`` lanes sending requests
back to back until ``max_requests`` were started or ``duration_s`` passed. Client CPU time is
the process's ``getrusage`` delta over the measured window only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import math
import os
import resource
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from benchmarks.clients import Target
from benchmarks.payload import check_vectors
from benchmarks.stats import latency_summary

__all__ = ["LoadSpec", "measure_memory", "run_load"]

MAX_ERRORS: Final = 20  # a cell stops early after this many failed requests
CLOSE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Bounds of one measured cell."""

    concurrency: int
    duration_s: float
    max_requests: int
    warmup_s: float
    # Hard stop for the measured window; lanes still running then are cancelled (async) or
    # abandoned (threads) and the cell is marked timed out.
    timeout_s: float


class _Tally:
    """Latencies and errors of one window; ``list.append`` is atomic, so threads share it."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.samples: list[str] = []
        self.started = 0
        self.lock = threading.Lock()

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        text = f"{type(exc).__name__}: {exc}"[:300]
        if len(self.samples) < 3 and text not in self.samples:
            self.samples.append(text)

    def take(self, max_requests: int, deadline: float) -> bool:
        """Reserve the next request, or say the window is over."""
        with self.lock:
            if (self.started >= max_requests or time.perf_counter() >= deadline
                    or self.errors >= MAX_ERRORS):
                return False
            self.started += 1
            return True


# -- async -------------------------------------------------------------------------------


async def _drive_async(embed: Callable[[], Awaitable[Any]], concurrency: int,
                       max_requests: int, seconds: float) -> _Tally:
    tally = _Tally()
    deadline = time.perf_counter() + seconds

    async def lane() -> None:
        while tally.take(max_requests, deadline):
            start = time.perf_counter()
            try:
                vectors = await embed()
                tally.latencies.append(time.perf_counter() - start)
                check_vectors(vectors)
            except Exception as exc:
                tally.error(exc)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return tally


async def _async_cell(client: Any, spec: LoadSpec) -> dict[str, Any]:
    await client.open()
    try:
        warm = await asyncio.wait_for(
            _drive_async(client.embed, spec.concurrency, max(2 * spec.concurrency, 4),
                         spec.warmup_s),
            timeout=spec.timeout_s,
        )
        gc.collect()
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        timed_out = False
        try:
            tally = await asyncio.wait_for(
                _drive_async(client.embed, spec.concurrency, spec.max_requests,
                             spec.duration_s),
                timeout=spec.timeout_s,
            )
        except TimeoutError:
            tally, timed_out = _Tally(), True
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await asyncio.wait_for(client.close(), timeout=CLOSE_TIMEOUT_S)
    return _result(tally, warm, elapsed, before, after, timed_out)


# -- threads -----------------------------------------------------------------------------


def _drive_threads(embed: Callable[[], Any], concurrency: int, max_requests: int,
                   seconds: float, timeout_s: float) -> tuple[_Tally, bool]:
    tally = _Tally()
    deadline = time.perf_counter() + seconds

    def lane() -> None:
        while tally.take(max_requests, deadline):
            start = time.perf_counter()
            try:
                vectors = embed()
                tally.latencies.append(time.perf_counter() - start)
                check_vectors(vectors)
            except Exception as exc:
                tally.error(exc)

    threads = [threading.Thread(target=lane, daemon=True, name=f"lane-{i}")
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    stop = time.perf_counter() + timeout_s
    for thread in threads:
        thread.join(max(stop - time.perf_counter(), 0.0))
    return tally, any(thread.is_alive() for thread in threads)


def _sync_cell(client: Any, spec: LoadSpec) -> dict[str, Any]:
    client.open()
    try:
        warm, _ = _drive_threads(client.embed, spec.concurrency, max(2 * spec.concurrency, 4),
                                 spec.warmup_s, spec.timeout_s)
        gc.collect()
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        tally, timed_out = _drive_threads(client.embed, spec.concurrency, spec.max_requests,
                                          spec.duration_s, spec.timeout_s)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        client.close()
    return _result(tally, warm, elapsed, before, after, timed_out)


def _result(tally: _Tally, warm: _Tally, elapsed: float, before: Any, after: Any,
            timed_out: bool) -> dict[str, Any]:
    return {
        "requests": len(tally.latencies),
        "errors": tally.errors + warm.errors,
        "error_samples": warm.samples + tally.samples,
        "warmup_requests": len(warm.latencies),
        "elapsed_s": elapsed,
        "cpu_user_s": after.ru_utime - before.ru_utime,
        "cpu_sys_s": after.ru_stime - before.ru_stime,
        "timed_out": timed_out,
        **latency_summary(tally.latencies),
    }


def run_load(mode: str, factory: Callable[[Target, int], Any], target: Target,
             spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Measure one cell with a fresh client; ``loop`` is the worker's one event loop."""
    client = factory(target, spec.concurrency)
    if mode == "async":
        return loop.run_until_complete(_async_cell(client, spec))
    return _sync_cell(client, spec)


# -- memory per open connection ------------------------------------------------------------


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return math.nan


def _trim() -> None:
    """Hand freed heap back to the OS (glibc), so that RSS growth shows new allocations only."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _open_sockets() -> int:
    """Sockets this process holds (the event loop's self-pipe included, which is constant)."""
    count = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return -1
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def _wave(mode: str, client: Any, connections: int,
          loop: asyncio.AbstractEventLoop) -> _Tally:
    """``connections`` requests at once, so that a pool opens that many connections."""
    if mode == "async":
        return loop.run_until_complete(asyncio.wait_for(
            _drive_async(client.embed, connections, connections, 30.0), timeout=60.0))
    tally, _ = _drive_threads(client.embed, connections, connections, 30.0, 60.0)
    return tally


def _open(mode: str, client: Any, loop: asyncio.AbstractEventLoop) -> None:
    if mode == "async":
        loop.run_until_complete(client.open())
    else:
        client.open()


def _close(mode: str, client: Any, loop: asyncio.AbstractEventLoop) -> None:
    if mode == "async":
        loop.run_until_complete(asyncio.wait_for(client.close(), timeout=CLOSE_TIMEOUT_S))
    else:
        client.close()


def _held_delta(mode: str, client: Any, connections: int, loop: asyncio.AbstractEventLoop,
                measure: Callable[[], float]) -> tuple[float, int, _Tally]:
    """Memory growth and sockets gained while going from 1 to ``connections`` idle connections."""
    _open(mode, client, loop)
    try:
        first = _wave(mode, client, 1, loop)
        _trim()
        memory, sockets = measure(), _open_sockets()
        tally = _wave(mode, client, connections, loop)
        gc.collect()
        grown = measure() - memory
        held = _open_sockets() - sockets
    finally:
        _close(mode, client, loop)
    tally.errors += first.errors
    return grown, held, tally


def measure_memory(mode: str, factory: Callable[[Target, int], Any], target: Target,
                   connections: int, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """RSS and Python-heap (tracemalloc) bytes per idle connection a client keeps open.

    RSS is trimmed (``malloc_trim``) before the baseline so that memory freed by earlier
    cells does not absorb the growth; tracemalloc counts Python allocations whatever the heap
    held before.
    """
    rss, held, tally = _held_delta(mode, factory(target, connections), connections, loop,
                                   _rss_bytes)
    tracemalloc.start()
    try:
        traced, held_py, tally_py = _held_delta(
            mode, factory(target, connections), connections, loop,
            lambda: float(tracemalloc.get_traced_memory()[0]),
        )
    finally:
        tracemalloc.stop()
    return {
        "requests": len(tally.latencies) + len(tally_py.latencies),
        "errors": tally.errors + tally_py.errors,
        "error_samples": tally.samples + tally_py.samples,
        "held": held,
        "rss_kb": rss / 1024,
        "rss_kb_per_conn": rss / 1024 / held if held > 0 else math.nan,
        "py_kb_per_conn": traced / 1024 / held_py if held_py > 0 else math.nan,
    }
