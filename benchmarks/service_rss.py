"""The service's memory after start, per embedder backend: onnxruntime against torch.

``python -m benchmarks.service_rss --torch-python PY --onnx-python PY`` from the repository
root. Each run starts ``rag-llm serve --ingest samples/corpus`` on a free port of 127.0.0.1
with a new data directory, the README's first command, with ``backend`` set to ``onnx`` or
``torch``; waits for ``/health``, asks one question through ``/v1/query``, then reads the
process's ``VmRSS`` (resident now) and ``VmHWM`` (its peak) and stops it. Runs alternate
between the backends, ``--repeats`` of each (default 3), and the figures are medians with
their range, and the onnx/torch ratio of the medians, from the same run. ``ready_s`` is the
time from the start of the process to its first answer of ``/health``: imports, model load
and the sample corpus's ingest.

Both interpreters need rag-llm importable (``PYTHONPATH=src`` is set for them); the onnx one
is best a torch-free venv, as a user's would be. ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.processes import stop_process
from benchmarks.upstream import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "samples" / "corpus"
_READY_TIMEOUT_S = 180.0
_QUESTION = b'{"question": "How much pressure does an espresso machine use?"}'


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _get(url: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body,  # noqa: S310 - 127.0.0.1 only
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        data: bytes = answer.read()
        return data


def measure(python: str, backend: str) -> dict[str, float]:
    """Start the service on ``backend`` once; its RSS after start, peak and time to ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    with tempfile.TemporaryDirectory() as data_dir:
        config = Path(data_dir) / "rag-llm.toml"
        config.write_text(f'[providers.embedding]\ntype = "local"\nbackend = "{backend}"\n')
        log = Path(data_dir) / "stderr.log"  # a file: a full pipe would stall the service
        started = time.perf_counter()
        with log.open("wb") as stderr:
            process = subprocess.Popen(  # noqa: S603 - our own CLI, arguments fixed here
                [python, "-m", "rag_llm.cli", "serve", "--config", str(config), "--data-dir",
                 str(Path(data_dir) / "store"), "--port", str(port), "--ingest", str(CORPUS)],
                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{backend}: the service exited with {process.returncode}"
                                       f": {log.read_text(errors='replace')[-2000:]}")
                if time.perf_counter() - started > _READY_TIMEOUT_S:
                    raise RuntimeError(f"{backend}: no /health within {_READY_TIMEOUT_S:.0f} s")
                try:
                    _get(base + "/health")
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.05)
            ready = time.perf_counter() - started
            answer = json.loads(_get(base + "/v1/query", _QUESTION))
            if not answer.get("citations"):
                raise RuntimeError(f"{backend}: the query found nothing: {answer}")
            time.sleep(0.5)
            return {"rss_mib": _status_kib(process.pid, "VmRSS") / 1024,
                    "peak_mib": _status_kib(process.pid, "VmHWM") / 1024, "ready_s": ready}
        finally:
            stop_process(process, grace=0)  # SIGTERM now, SIGKILL if it lingers


def run(pythons: dict[str, str], repeats: int) -> dict[str, dict[str, list[float]]]:
    """``repeats`` runs of each backend, alternating so that both see the same machine."""
    runs: dict[str, dict[str, list[float]]] = {backend: {} for backend in pythons}
    for repeat in range(repeats):
        order = list(pythons) if repeat % 2 == 0 else list(reversed(pythons))
        for backend in order:
            figures = measure(pythons[backend], backend)
            for key, value in figures.items():
                runs[backend].setdefault(key, []).append(value)
            print(f"  {backend:5} run {repeat + 1}: RSS {figures['rss_mib']:.0f} MiB, peak"
                  f" {figures['peak_mib']:.0f} MiB, ready in {figures['ready_s']:.2f} s",
                  file=sys.stderr)
    return runs


def report(runs: dict[str, dict[str, list[float]]]) -> None:
    print("| backend | RSS after start (MiB) | peak (MiB) | ready (s) |")
    print("|---|---|---|---|")
    def cell(key: str, values: list[float]) -> str:
        digits = 2 if key == "ready_s" else 0
        return (f"{statistics.median(values):.{digits}f}"
                f" ({min(values):.{digits}f}-{max(values):.{digits}f})")

    for backend, series in runs.items():
        cells = [cell(key, values) for key, values in series.items()]
        print(f"| {backend} | " + " | ".join(cells) + " |")
    if {"onnx", "torch"} <= runs.keys():
        ratios = ", ".join(
            f"{key} {statistics.median(runs['onnx'][key]) / statistics.median(values):.2f}x"
            for key, values in runs["torch"].items())
        print(f"onnx / torch, same run: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx-python", default=sys.executable)
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--backend", action="append", choices=("onnx", "torch"),
                        help="repeatable; default: both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    backends = args.backend or ["onnx", "torch"]
    pythons = {backend: getattr(args, f"{backend}_python") for backend in backends}
    runs = run(pythons, args.repeats)
    report(runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
