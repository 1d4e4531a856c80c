"""The parent's side of a worker subprocess: start it, send a command, wait bounded, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Final

from benchmarks.processes import stop_process

__all__ = ["REPO_ROOT", "WorkerError", "WorkerProcess", "child_env"]

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_START_TIMEOUT_S: Final = 120.0  # LiteLLM alone takes 5-7 s to import on these machines


class WorkerError(RuntimeError):
    """A worker did not answer in time, or died."""


def child_env() -> dict[str, str]:
    """The environment of every child: this repo importable, LiteLLM offline and quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.setdefault("LITELLM_LOG", "ERROR")
    return env


class WorkerProcess:
    """One ``python -m benchmarks.worker`` child, spoken to in JSON lines."""

    def __init__(self, client: str, *, cpu: int | None, log_path: Path) -> None:
        self.client = client
        self._cpu = cpu
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.ready: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        command = [sys.executable, "-m", "benchmarks.worker", "--client", self.client]
        if self._cpu is not None:
            command += ["--cpu", str(self._cpu)]
        self._log = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, cwd=REPO_ROOT, env=child_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,),
                                        daemon=True, name=f"worker-{self.client}")
        self._reader.start()
        self.ready = self._receive(_START_TIMEOUT_S)
        return self.ready

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise WorkerError(f"{self.client}: no answer within {timeout:.0f}s") from None
        if line is None:
            self.stop()
            raise WorkerError(f"{self.client}: worker exited (see {self._log_path.name})")
        message: dict[str, Any] = json.loads(line)
        return message

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``command`` and wait at most ``timeout`` seconds for its answer."""
        process = self._process
        if process is None or process.stdin is None or process.poll() is not None:
            raise WorkerError(f"{self.client}: worker is not running")
        try:
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()
        except OSError as exc:
            raise WorkerError(f"{self.client}: cannot write to worker: {exc}") from None
        return self._receive(timeout)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Ask the worker to exit; terminate, then kill, if it does not. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                try:
                    if process.poll() is None:
                        process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                        process.stdin.flush()
                except OSError:
                    pass
                with contextlib.suppress(OSError):
                    process.stdin.close()
            stop_process(process, grace=10)
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader = None
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
