"""Runs a whole benchmark: servers up, every cell through its client's worker, servers down.

The runner owns every process it starts (nginx, the proxy, one worker per client) and stops
them in ``finally``, whatever happens. Each cell is
bounded by its plan (requests and seconds) and by a hard timeout on the worker's answer;
the run as a whole by the plan's budget, after which the remaining cells are skipped.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.clients import ClientSpec, client_specs, rag_llm_transports
from benchmarks.harness import WorkerError, WorkerProcess
from benchmarks.imports import measure_imports
from benchmarks.load import LoadSpec
from benchmarks.plan import Plan
from benchmarks.proxy import LatencyProxy
from benchmarks.redis_server import RedisServer, RedisUnavailable
from benchmarks.results import Index, summarize, write_results
from benchmarks.scenarios import SCENARIOS, Cell, build_cells, select_clients
from benchmarks.targets import evaluate
from benchmarks.upstream import HTTP2_MAX_STREAMS, Nginx

__all__ = ["RunOptions", "run"]

_GRACE_S = 30.0  # beyond a cell's own bounds, before its worker is declared stuck


@dataclass(frozen=True, slots=True)
class RunOptions:
    plan: Plan
    scenarios: tuple[str, ...] = SCENARIOS
    clients: tuple[str, ...] | None = None  # shell-style patterns; None: all
    out_dir: Path = Path("benchmarks/results")
    pin: bool = True
    progress: bool = True
    charts: bool = True


class _Progress:
    """tqdm when installed, else one line per step on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = None
        self._done = 0
        self._total = total
        self._enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="cell", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self._bar = None

    def step(self, label: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.set_description(label[:60], refresh=False)
            self._bar.update(1)
        elif self._enabled:
            print(f"[{self._done}/{self._total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _cpus(pin: bool) -> tuple[int | None, int | None]:
    """(client CPU, server CPU): different cores where there are two and pinning is allowed."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


class _Run:
    def __init__(self, options: RunOptions, specs: dict[str, ClientSpec]) -> None:
        self.options = options
        self.plan = options.plan
        self.specs = specs
        self.client_cpu, self.server_cpu = _cpus(options.pin)
        self.workers: dict[str, WorkerProcess] = {}
        self.clients: dict[str, dict[str, Any]] = {
            name: {"mode": spec.mode, "description": spec.description,
                   "distribution": spec.distribution, "rag_llm": spec.rag_llm,
                   "available": None, "version": None, "error": None}
            for name, spec in specs.items()
        }
        self.nginx: Nginx | None = None
        self.proxy: LatencyProxy | None = None
        # For the clients that keep rag-llm's limits in Redis; None: none selected.
        self.redis: RedisServer | None = None
        self._redis_error: str | None = None
        self.logs = options.out_dir / "logs"
        self.started_at = ""

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, name: str) -> WorkerProcess | None:
        info = self.clients[name]
        if info["available"] is False:
            return None
        if self.specs[name].state and self.redis is None:
            info.update(available=False, error=self._redis_error or "no redis-server")
            return None
        worker = WorkerProcess(name, cpu=self.client_cpu, log_path=self.logs / f"{name}.log")
        try:
            ready = worker.start()
        except WorkerError as exc:
            info.update(available=False, error=str(exc))
            return None
        if not ready.get("ok"):
            worker.stop()
            info.update(available=False, error=ready.get("error"))
            return None
        info.update(available=True, version=ready.get("version"))
        return worker

    def _worker(self, name: str) -> WorkerProcess | None:
        worker = self.workers.get(name)
        if worker is not None and worker.alive:
            return worker
        worker = self._spawn(name)
        if worker is not None:
            self.workers[name] = worker
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.workers.clear()

    # -- one cell ------------------------------------------------------------------------

    def _base_url(self, cell: Cell) -> str:
        assert self.nginx is not None
        if not cell.via_proxy:
            return self.nginx.base_url(cell.scheme)
        assert self.proxy is not None
        port = self.proxy.port(self.nginx.port(cell.scheme), cell.rtt_ms)
        return f"{cell.scheme}://127.0.0.1:{port}/v1"

    def _command(self, cell: Cell) -> tuple[dict[str, Any], float]:
        assert self.nginx is not None
        command: dict[str, Any] = {"base_url": self._base_url(cell),
                                   "ca_path": self.nginx.ca_path,
                                   "state_url": self.redis.url if self.redis else None}
        if cell.scenario == "memory":
            return {**command, "op": "memory", "connections": cell.connections}, 120.0
        bound = cell.duration_s + cell.warmup_s + _GRACE_S
        load = LoadSpec(concurrency=cell.concurrency, duration_s=cell.duration_s,
                        max_requests=cell.max_requests, warmup_s=cell.warmup_s,
                        timeout_s=cell.duration_s + _GRACE_S)
        return {**command, "op": "load", "load": dataclasses.asdict(load)}, 2 * bound + 15

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        sample: dict[str, Any] = {**cell.group(), "repeat": cell.repeat}
        worker = self._worker(cell.client)
        if worker is None:
            return {**sample, "ok": False, "skipped": True,
                    "error": self.clients[cell.client]["error"]}
        assert self.nginx is not None
        command, timeout = self._command(cell)
        mark = self.nginx.log_mark()
        started = time.monotonic()
        try:
            result = worker.request(command, timeout)
        except WorkerError as exc:
            worker.stop()
            result = {"ok": False, "error": str(exc)}
        sample["wall_s"] = round(time.monotonic() - started, 3)
        expect = int(result.get("requests", 0)) + int(result.get("warmup_requests", 0))
        window = self.nginx.log_window(mark, expect=expect)
        sample.update(result)
        sample.update(server_requests=window.requests, connections=window.connections_opened,
                      connections_used=window.connections_used, non_200=window.non_200,
                      http2_share=(window.http2_requests / window.requests if window.requests
                                   else float("nan")))
        requests = int(result.get("requests", 0))
        if result.get("ok") and cell.scenario != "memory":
            elapsed = float(result["elapsed_s"])
            cpu = float(result["cpu_user_s"]) + float(result["cpu_sys_s"])
            sample["rps"] = requests / elapsed if elapsed > 0 else float("nan")
            sample["cpu_ms_per_req"] = cpu * 1000 / requests if requests else float("nan")
            sample["requests_per_connection"] = (
                window.requests / window.connections_used if window.connections_used
                else float("nan"))
            if requests == 0 or result.get("timed_out"):
                sample["ok"] = False
                sample.setdefault("error", "no request completed" if requests == 0
                                  else "timed out")
        return sample

    # -- the whole run --------------------------------------------------------------------

    def _proxy_routes(self, cells: Sequence[Cell]) -> list[tuple[int, float]]:
        assert self.nginx is not None
        needed = sorted({(c.scheme, c.rtt_ms) for c in cells if c.via_proxy})
        return [(self.nginx.port(scheme), float(rtt)) for scheme, rtt in needed]

    def execute(self) -> dict[str, Any]:
        plan = self.plan
        cells = build_cells(plan, self.options.scenarios, self.specs)
        modules = _import_modules(self.specs) if "import" in self.options.scenarios else []
        self.logs.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        samples: list[dict[str, Any]] = []
        progress = _Progress(len(cells) + len(modules) * plan.import_repeats,
                             self.options.progress)
        previous_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        with ExitStack() as stack:
            stack.callback(progress.close)
            if self.server_cpu is not None and previous_affinity is not None:
                # The runner mostly waits; keep it off the client's core.
                os.sched_setaffinity(0, {self.server_cpu})
                stack.callback(os.sched_setaffinity, 0, previous_affinity)
            self.nginx = stack.enter_context(Nginx(cpu=self.server_cpu))
            if any(self.specs[c.client].state for c in cells):
                try:
                    self.redis = stack.enter_context(RedisServer(cpu=self.server_cpu))
                except RedisUnavailable as exc:
                    self._redis_error = str(exc)
            stack.callback(self.stop_workers)
            routes = self._proxy_routes(cells)
            if routes:
                self.proxy = stack.enter_context(LatencyProxy(routes, cpu=self.server_cpu))
            for cell in cells:
                if time.monotonic() - started > plan.budget_s:
                    samples.append({**cell.group(), "repeat": cell.repeat, "ok": False,
                                    "skipped": True, "error": "run budget exhausted"})
                else:
                    samples.append(self.run_cell(cell))
                progress.step(cell.label())
            self.stop_workers()
            if modules:
                samples += measure_imports(modules, plan.import_repeats, cpu=self.client_cpu,
                                           tick=progress.step)
            meta = self._meta(started)
        return self._results(samples, meta)

    def _meta(self, started: float) -> dict[str, Any]:
        assert self.nginx is not None
        return {
            "started": self.started_at,
            "duration_s": round(time.monotonic() - started, 1),
            "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "client_cpu": self.client_cpu,
            "server_cpu": self.server_cpu,
            "pinned": self.client_cpu is not None,
            "nginx": self.nginx.version,
            "nginx_pid": self.nginx.pid,
            "nginx_taskset": self.nginx.pinned,
            "nginx_http2": self.nginx.http2,
            "nginx_http2_streams": HTTP2_MAX_STREAMS if self.nginx.http2 else None,
            "proxy_pid": self.proxy.pid if self.proxy else None,
            "event_loop": "asyncio (default)",
            "scenarios": list(self.options.scenarios),
            "transports": list(rag_llm_transports()),
        }

    def _results(self, samples: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
        summary = summarize(samples)
        measured = {entry["client"] for entry in summary}
        transports = [t for t in rag_llm_transports()
                      if {f"ragllm-{t}", f"ragllm-{t}-sync"} & measured]
        targets = evaluate(Index(summary), transports)
        return {"meta": meta, "plan": self.plan.as_dict(), "clients": self.clients,
                "summary": summary, "targets": [t.as_dict() for t in targets],
                "samples": samples}


def _import_modules(specs: dict[str, ClientSpec]) -> list[str]:
    modules = {"rag_llm": None}
    for spec in specs.values():
        if spec.module != "asyncio":
            modules.setdefault(spec.module, None)
    return list(modules)


def run(options: RunOptions,
        write_outputs: Callable[[Path, dict[str, Any], bool], list[Path]] | None = None,
        ) -> tuple[dict[str, Any], list[Path]]:
    """Run the benchmark of ``options``; write results.json (and what ``write_outputs`` makes)."""
    specs = select_clients(client_specs(), options.clients)
    if not specs:
        raise ValueError(f"no client matches {options.clients!r}; known: "
                         f"{', '.join(client_specs())}")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    results = _Run(options, specs).execute()
    path = options.out_dir / "results.json"
    write_results(path, results)
    written = [path]
    if write_outputs is not None:
        written += write_outputs(options.out_dir, results, options.charts)
    return results, written
