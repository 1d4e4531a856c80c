"""The upstream: Debian's nginx on 127.0.0.1, HTTP and HTTPS, answering fixed OpenAI JSON.

nginx runs as a child process with a generated config in a temporary directory (one worker,
``keepalive_requests`` high, a self-signed CA made at start with trustme) and logs
``$connection`` and ``$server_protocol`` per request, so a cell's connections and the HTTP
version it spoke are counted at the server. The HTTPS port offers HTTP/2 by ALPN where nginx
has the module (``--with-http_v2_module``: Debian 12's nginx, which nginx-light installs); a
client that does not ask for ``h2`` gets HTTP/1.1 on the same port. Under ``/stream/v1`` the
chat answer comes as an event stream, for streamed calls.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.payload import CHAT_RESPONSE, CHAT_STREAM_RESPONSE, EMBEDDINGS_RESPONSE
from benchmarks.processes import stop_process

__all__ = [
    "HTTP2_MAX_STREAMS",
    "LogWindow",
    "Nginx",
    "NginxUnavailable",
    "free_port",
    "http2_style",
    "nginx_binary",
]

# nginx rejects a config token longer than 4 KiB: the 19 KB body goes in as variables.
_CHUNK: Final = 3000
_START_TIMEOUT_S: Final = 10.0
# nginx 1.25.1 replaced ``listen ... http2`` (deprecated since) with ``http2 on;``.
_HTTP2_DIRECTIVE_SINCE: Final = (1, 25, 1)
# Streams one HTTP/2 connection may carry at once: nginx's default, stated so the report can.
HTTP2_MAX_STREAMS: Final = 128
_TEMP_PATHS: Final = {
    "--http-client-body-temp-path": "client_body_temp_path",
    "--http-proxy-temp-path": "proxy_temp_path",
    "--http-fastcgi-temp-path": "fastcgi_temp_path",
    "--http-uwsgi-temp-path": "uwsgi_temp_path",
    "--http-scgi-temp-path": "scgi_temp_path",
}


class NginxUnavailable(RuntimeError):
    """nginx is not installed, or did not start."""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)


def free_port() -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _nginx_info(binary: str) -> tuple[str, str]:
    """(version, configure arguments) as ``nginx -V`` prints them."""
    done = subprocess.run([binary, "-V"],  # noqa: S603 - the nginx found on PATH
                          capture_output=True, text=True, timeout=10,
                          check=False)
    text = done.stderr + done.stdout
    version = next((line.split("/", 1)[-1].strip() for line in text.splitlines()
                    if line.startswith("nginx version")), "?")
    return version, text


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def http2_style(version: str, configure: str) -> str | None:
    """How this nginx turns HTTP/2 on: ``"listen"`` (before 1.25.1), ``"directive"``, or None
    when it was built without the http_v2 module."""
    if "--with-http_v2_module" not in configure:
        return None
    return "directive" if _version_tuple(version) >= _HTTP2_DIRECTIVE_SINCE else "listen"


def _return_directives(body: str) -> str:
    for quote in ("'", "$", "\\"):
        if quote in body:
            raise ValueError(f"response body must not contain {quote!r}")
    chunks = [body[i:i + _CHUNK] for i in range(0, len(body), _CHUNK)]
    sets = " ".join(f"set $b{i} '{chunk}';" for i, chunk in enumerate(chunks))
    joined = "".join(f"${{b{i}}}" for i in range(len(chunks)))
    return f'{sets} return 200 "{joined}";'


def _config(workdir: Path, http_port: int, https_port: int, configure: str,
            http2: str | None) -> str:
    temp_paths = "\n".join(
        f"    {directive} {workdir / directive};"
        for flag, directive in _TEMP_PATHS.items() if flag in configure
    )
    # One port, both versions: ALPN picks h2 for a client that offers it, else HTTP/1.1.
    https_listen = "ssl http2" if http2 == "listen" else "ssl"
    http2_on = " ".join(
        (["http2 on;"] if http2 == "directive" else [])
        + ([f"http2_max_concurrent_streams {HTTP2_MAX_STREAMS};"] if http2 else []))
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    log_format bench '$connection $connection_requests $status $server_protocol';
    access_log {workdir / "access.log"} bench;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server_tokens off;
{temp_paths}
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} {https_listen} backlog=4096;
        {http2_on}
        ssl_certificate {workdir / "server.pem"};
        ssl_certificate_key {workdir / "server.key"};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /v1/embeddings {{
            default_type application/json;
            {_return_directives(EMBEDDINGS_RESPONSE)}
        }}
        location = /v1/chat/completions {{
            default_type application/json;
            {_return_directives(CHAT_RESPONSE)}
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            {_return_directives(CHAT_STREAM_RESPONSE)}
        }}
        location / {{
            default_type application/json;
            return 404 '{{"error":{{"message":"not found","type":"invalid_request_error"}}}}';
        }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class LogWindow:
    """What nginx logged between two marks.

    ``connections_used`` counts the distinct connections that served a request;
    ``connections_opened`` those among them that are new to this run (nginx numbers its
    connections in increasing order), so a client that kept connections from an earlier
    cell is not charged for them again. ``http2_requests`` were served over HTTP/2.
    """

    requests: int
    connections_used: int
    connections_opened: int
    non_200: int
    http2_requests: int = 0


class Nginx:
    """nginx as a child process; ``with Nginx(cpu=1) as server: server.base_url("https")``."""

    def __init__(self, *, cpu: int | None = None) -> None:
        binary = nginx_binary()
        if binary is None:
            raise NginxUnavailable("nginx is not installed (Debian: apt-get install nginx-light)")
        self.binary = binary
        self.version, self._configure = _nginx_info(binary)
        self._http2_style = http2_style(self.version, self._configure)
        self.http2 = self._http2_style is not None  # the HTTPS port offers h2
        self.cpu = cpu
        self.pinned = cpu is not None and shutil.which("taskset") is not None
        self.http_port = 0
        self.https_port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._newest_connection = 0  # the highest $connection logged so far

    @property
    def ca_path(self) -> str:
        assert self._dir is not None
        return str(self._dir / "ca.pem")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def base_url(self, scheme: str) -> str:
        port = self.https_port if scheme == "https" else self.http_port
        return f"{scheme}://127.0.0.1:{port}/v1"

    def port(self, scheme: str) -> int:
        return self.https_port if scheme == "https" else self.http_port

    def _write_files(self, workdir: Path) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(workdir / "server.pem"), append=True)
        cert.private_key_pem.write_to_path(str(workdir / "server.key"))

    def start(self) -> Nginx:
        workdir = Path(tempfile.mkdtemp(prefix="rag-llm-bench-nginx-"))
        workdir.chmod(0o755)
        self._dir = workdir
        atexit.register(self.stop)
        self._write_files(workdir)
        for _attempt in range(3):  # a port picked free may be taken before nginx binds it
            self.http_port, self.https_port = free_port(), free_port()
            (workdir / "nginx.conf").write_text(
                _config(workdir, self.http_port, self.https_port, self._configure,
                        self._http2_style))
            command = [self.binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                       "-e", str(workdir / "error.log")]
            if self.pinned:
                command = ["taskset", "-c", str(self.cpu), *command]
            self._process = subprocess.Popen(command,  # noqa: S603 - nginx, generated config
                                             stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
            if self._wait_listening():
                return self
            self._terminate()
        error = (workdir / "error.log").read_text(errors="replace")[-1000:]
        self.stop()
        raise NginxUnavailable(f"nginx did not start: {error}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                for port in (self.http_port, self.https_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            stop_process(process, grace=5)

    def stop(self) -> None:
        """Stop nginx and remove its directory; idempotent."""
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the access log ------------------------------------------------------------------

    def log_mark(self) -> int:
        assert self._dir is not None
        path = self._dir / "access.log"
        return path.stat().st_size if path.exists() else 0

    def log_window(self, mark: int, expect: int = 0) -> LogWindow:
        """Lines logged since ``mark``; waits briefly (bounded) for at least ``expect``.

        nginx writes a line after it sent the response, so the last few may lag the client.
        """
        assert self._dir is not None
        path = self._dir / "access.log"
        deadline = time.monotonic() + 1.0
        while True:
            with open(path, "rb") as log:
                log.seek(mark)
                data = log.read()
            lines = data[: data.rfind(b"\n") + 1].splitlines()
            if len(lines) >= expect or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        connections: set[int] = set()
        non_200 = http2 = 0
        for line in lines:
            fields = line.split()
            if len(fields) < 3 or not fields[0].isdigit():
                continue
            connections.add(int(fields[0]))
            non_200 += fields[2] != b"200"
            http2 += len(fields) > 3 and fields[3] == b"HTTP/2.0"
        opened = sum(1 for c in connections if c > self._newest_connection)
        self._newest_connection = max(connections, default=self._newest_connection)
        return LogWindow(requests=len(lines), connections_used=len(connections),
                         connections_opened=opened, non_200=non_200, http2_requests=http2)

