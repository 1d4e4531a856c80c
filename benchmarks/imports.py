"""Import time of each library in a fresh interpreter: ``python -X importtime -c "import X"``.

``import_ms`` is the cumulative time ``-X importtime`` reports for the top-level module (the
import alone, interpreter start-up excluded); ``wall_ms`` is the wall-clock time of the
process minus that of ``python -c pass`` in the same repeat. Modules are interleaved across
repeats, like every other scenario.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from benchmarks.harness import REPO_ROOT, child_env

__all__ = ["measure_imports", "parse_importtime"]

_TIMEOUT_S: Final = 60.0


def parse_importtime(stderr: str, module: str) -> float:
    """Cumulative microseconds of ``module`` in ``-X importtime`` output, or nan."""
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = [field.strip() for field in line[len("import time:"):].split("|")]
        if len(fields) == 3 and fields[2] == module:
            try:
                return float(fields[1])
            except ValueError:
                return float("nan")
    return float("nan")


def _run(code: str, cpu: int | None, importtime: bool) -> tuple[float, str, int]:
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    started = time.perf_counter()
    done = subprocess.run(command,  # noqa: S603 - sys.executable, fixed arguments
                          cwd=REPO_ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=_TIMEOUT_S, check=False)
    return (time.perf_counter() - started) * 1000.0, done.stderr, done.returncode


def measure_imports(modules: Sequence[str], repeats: int, *, cpu: int | None,
                    tick: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One sample per (module, repeat); a module that fails to import gets an error sample."""
    samples: list[dict[str, Any]] = []
    for repeat in range(repeats):
        baseline, _, _ = _run("pass", cpu, importtime=False)
        for module in modules:
            sample: dict[str, Any] = {"scenario": "import", "client": module,
                                      "repeat": repeat, "scheme": "", "rtt_ms": 0,
                                      "via_proxy": False, "concurrency": 1}
            try:
                wall, stderr, code = _run(f"import {module}", cpu, importtime=True)
            except subprocess.TimeoutExpired:
                sample.update(ok=False, error=f"timed out after {_TIMEOUT_S:.0f}s")
            else:
                if code != 0:
                    sample.update(ok=False, error=stderr.strip().splitlines()[-1][:300]
                                  if stderr.strip() else f"exit {code}")
                else:
                    sample.update(ok=True, import_ms=parse_importtime(stderr, module) / 1000,
                                  wall_ms=wall - baseline)
            samples.append(sample)
            if tick is not None:
                tick(f"import {module} #{repeat + 1}")
    return samples
