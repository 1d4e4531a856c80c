"""A redis-server for the clients that keep rag-llm's limits in Redis (``ragllm-*-redis``).

Started by the runner only when such a client is selected, on a free port of 127.0.0.1,
with no persistence, pinned to the server's CPU like nginx, and stopped in ``finally``.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from benchmarks.processes import stop_process
from benchmarks.upstream import free_port

__all__ = ["RedisServer", "RedisUnavailable"]

_START_TIMEOUT_S: Final = 10.0


class RedisUnavailable(RuntimeError):
    """No redis-server to start, or it did not answer."""


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process; ``url`` once started."""

    def __init__(self, *, cpu: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("redis-server is not installed "
                                   "(Debian: apt-get install redis-server)")
        self.binary = binary
        self.cpu = cpu
        self.pinned = cpu is not None and shutil.which("taskset") is not None
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self._dir = Path(tempfile.mkdtemp(prefix="rag-llm-bench-redis-"))
        atexit.register(self.stop)
        for _attempt in range(3):  # a port picked free may be taken before redis binds it
            self.port = free_port()
            command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", str(self._dir)]
            if self.pinned:
                command = ["taskset", "-c", str(self.cpu), *command]
            self._process = subprocess.Popen(command,  # noqa: S603 - redis-server, our args
                                             stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + _START_TIMEOUT_S
            while self._process.poll() is None and time.monotonic() < deadline:
                if _pong(self.port):
                    return self
                time.sleep(0.02)
            self._terminate()
        self.stop()
        raise RedisUnavailable("redis-server did not answer PING")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            stop_process(process, grace=5)

    def stop(self) -> None:
        """Stop redis-server and remove its directory; idempotent."""
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
