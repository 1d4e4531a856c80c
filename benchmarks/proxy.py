"""A latency-injecting TCP proxy: emulates a network round trip where ``tc netem`` is missing.

Each chunk is forwarded RTT/2 after it arrived, in each direction, and the first bytes a client
sends wait one extra RTT after the connection was accepted (the TCP handshake a real network
charges). So a new connection costs TCP 1 RTT + TLS 1.3 1 RTT before the request's own RTT,
as over a network. It runs in its own process (``python -m benchmarks.proxy``) so that it never
shares the measured client's GIL; :class:`LatencyProxy` starts and stops it. The proxy exits
when its stdin closes (its parent died) or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Final

from benchmarks.processes import stop_process

__all__ = ["LatencyProxy", "main"]

_CHUNK: Final = 65536


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   one_way: float, not_before: float) -> None:
    """Copy ``reader`` to ``writer``; a chunk leaves at max(arrival, not_before) + one_way."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while True:
            try:
                data = await reader.read(_CHUNK)
            except (ConnectionError, OSError):
                data = b""
            queue.put_nowait((max(loop.time(), not_before) + one_way, data))
            if not data:
                return

    async def send() -> None:
        while True:
            due, data = await queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return

    await asyncio.gather(receive(), send())


class _Route:
    def __init__(self, target_host: str, target_port: int, rtt_ms: float) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.rtt = rtt_ms / 1000.0

    async def handle(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        accepted = asyncio.get_running_loop().time()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        half = self.rtt / 2
        try:
            await asyncio.gather(
                _forward(client_reader, upstream_writer, half, accepted + self.rtt),
                _forward(upstream_reader, client_writer, half, 0.0),
            )
        except asyncio.CancelledError:
            pass  # shutting down: end quietly (a cancelled handler makes asyncio log a trace)
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()


async def _serve(target_host: str, routes: Sequence[tuple[int, float]],
                 max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    listening = []
    for target_port, rtt_ms in routes:
        route = _Route(target_host, target_port, rtt_ms)
        server = await asyncio.start_server(route.handle, "127.0.0.1", 0, backlog=4096)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        listening.append({"target_port": target_port, "rtt_ms": rtt_ms, "port": port})
    print(json.dumps({"routes": listening}), flush=True)
    stop = asyncio.Event()
    # Stdin at EOF means the parent is gone: never outlive it.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(
        sys.stdin.fileno(), 4096) else None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    for server in servers:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--route", action="append", default=[], metavar="TARGET_PORT:RTT_MS",
                        help="listen on a free port, forward to TARGET_PORT with RTT_MS")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    routes = [(int(port), float(rtt)) for port, _, rtt in
              (route.partition(":") for route in args.route)]
    asyncio.run(_serve(args.target_host, routes, args.max_seconds))
    return 0


class LatencyProxy:
    """Starts the proxy process; ``port(target_port, rtt_ms)`` is where to connect."""

    def __init__(self, routes: Sequence[tuple[int, float]], *, cpu: int | None = None,
                 max_seconds: float = 3600.0) -> None:
        self._routes = list(routes)
        self._cpu = cpu
        self._max_seconds = max_seconds
        self._process: subprocess.Popen[str] | None = None
        self._ports: dict[tuple[int, float], int] = {}

    def start(self) -> LatencyProxy:
        from benchmarks.harness import REPO_ROOT, child_env

        command = [sys.executable, "-m", "benchmarks.proxy",
                   "--max-seconds", str(self._max_seconds)]
        if self._cpu is not None:
            command += ["--cpu", str(self._cpu)]
        for target_port, rtt_ms in self._routes:
            command += ["--route", f"{target_port}:{rtt_ms:g}"]
        self._process = subprocess.Popen(command,  # noqa: S603 - our own module
                                         cwd=REPO_ROOT, env=child_env(),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # bounded: the child exits on error
        if not line:
            self.stop()
            raise RuntimeError("the latency proxy did not start")
        for route in json.loads(line)["routes"]:
            self._ports[(route["target_port"], float(route["rtt_ms"]))] = route["port"]
        return self

    def port(self, target_port: int, rtt_ms: float) -> int:
        return self._ports[(target_port, float(rtt_ms))]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        """Stop the proxy; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        stop_process(process, grace=5)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
