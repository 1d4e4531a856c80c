"""The tests' own redis-server (start, kill, restart on the same port, raw commands), a slow
proxy in front of it, and worker processes started together."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BINARY = shutil.which("redis-server") or ("/usr/bin/redis-server"
                                           if os.path.exists("/usr/bin/redis-server") else None)


SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            if password:
                sock.sendall(_encode("AUTH", password))
                if not sock.recv(16).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _encode(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass
class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep its port."""

    port: int
    workdir: str
    process: subprocess.Popen[bytes] | None = None
    # With one, the server refuses every command until AUTH with it (``requirepass``).
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert BINARY is not None
        auth = ["--requirepass", self.password] if self.password else []
        self.process = subprocess.Popen(
            [BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir, *auth],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(self.port, self.password):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (the tests' own view of the server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            if self.password:
                sock.sendall(_encode("AUTH", self.password))
                assert sock.recv(16).startswith(b"+OK"), "AUTH refused"
            sock.sendall(_encode(*args))
            return sock.recv(65536)



class Monitor:
    """Every command clients send to a server, as MONITOR shows them (those a script runs
    are left out): ``with Monitor(port) as seen: ...``, then ``seen.commands()``."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Monitor:
        self._sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += self._sock.recv(1)
        assert reply == b"+OK\r\n", reply
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while data := self._sock.recv(65536):
                buffer += data
                *lines, buffer = buffer.split(b"\r\n")
                self._lines += [line.decode(errors="replace") for line in lines]

    def commands(self) -> list[str]:
        """The names of the commands clients sent, in order (upper case)."""
        names = []
        for line in list(self._lines):
            if "[" not in line or " lua]" in line:
                continue
            names.append(line.split("] ", 1)[1].split(" ", 1)[0].strip('"').upper())
        return names


class SlowProxy:
    """A TCP proxy in front of a port that holds every chunk ``delay`` seconds each way."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            # As Redis and redis-py do: without it Nagle's algorithm and delayed ACKs held
            # the second of two replies in one handshake for 40 ms.
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


class Workers:
    """Processes of ``script`` started together: ``go()`` releases them all at once."""

    MARK = "@worker "

    def __init__(self, script: Path, tmp: Path) -> None:
        self.script = script
        self.go_file = tmp / "go"
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, spec: dict[str, Any]) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        process = subprocess.Popen(
            [sys.executable, str(self.script), json.dumps({"go": str(self.go_file), **spec})],
            stdout=subprocess.PIPE, text=True, env=env)
        self.processes.append(process)
        return process

    def wait_ready(self) -> list[dict[str, Any]]:
        ready = []
        for process in self.processes:
            assert process.stdout is not None
            line = ""
            while not line.startswith(self.MARK):
                line = process.stdout.readline()
                assert line, "the worker ended before it was ready"
            ready.append(json.loads(line.removeprefix(self.MARK)))
        return ready

    def go(self) -> None:
        self.go_file.write_text("go")

    def results(self, timeout: float = 120) -> list[dict[str, Any]]:
        found = []
        for process in self.processes:
            out, _ = process.communicate(timeout=timeout)
            assert process.returncode == 0, out
            (line,) = (line for line in out.splitlines() if line.startswith(self.MARK))
            found.append(json.loads(line.removeprefix(self.MARK)))
        return found

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout is not None and not process.stdout.closed:
                process.stdout.close()
