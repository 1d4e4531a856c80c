"""The UpstreamServer: lifecycle, TLS material, counters and behaviour knobs."""

from __future__ import annotations

import asyncio
import functools
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trustme

from rag_llm.testing._background import HOST, STOP_TIMEOUT, BackgroundServer
from rag_llm.testing._connection import Connection
from rag_llm.testing._faults import Fault, FaultQueue
from rag_llm.testing._openai import expected_embedding
from rag_llm.testing._records import RecordedRequest, Stats

_BACKLOG = 2048


class UpstreamServer(BackgroundServer):
    """A real OpenAI-compatible HTTP/1.1 server on 127.0.0.1 for tests.

    It runs its own asyncio loop in a daemon thread and counts TCP connections
    at the server side, so tests can prove how a client pools connections, and
    it injects faults (error statuses, dropped, reset or silent connections,
    truncated streams). The behaviour knobs (``delay``, ``idle_timeout``,
    ``keep_alive_header``, ``embedding_dim``, ``stream_interval``) may be
    changed from the test thread at any time; they apply to the next request.

    Closed connections satisfy ``connections_accepted == connections_open +
    connections_closed_by_client + connections_closed_by_server`` (until
    ``reset()`` is called with connections open); connections dropped by
    ``stop()`` count as closed by the server.
    """

    def __init__(
        self, *, tls: bool = False, api_key: str | None = None, embedding_dim: int = 8
    ) -> None:
        self.tls = tls
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        self.delay = 0.0
        self.idle_timeout: float | None = None
        self.keep_alive_header: int | None = None
        self.stream_interval = 0.0
        # Requests in flight beyond this many get 503 (None: no limit), like an overloaded
        # model server; settable while running.
        self.capacity: int | None = None
        self._in_flight = 0
        # The most requests in flight at once since start (or reset()).
        self._max_in_flight = 0
        self._stats = Stats()
        self._faults = FaultQueue()
        super().__init__()
        self._ca: trustme.CA | None = None
        self._tmpdir: str | None = None
        self._ca_cert_path: str | None = None
        self._connections: dict[int, Connection] = {}
        self._stopping = False
        self._server_tls: ssl.SSLContext | None = None

    def admit(self) -> bool:
        """Count a request in flight; False if it is over ``capacity`` (server thread only)."""
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return self.capacity is None or self._in_flight <= self.capacity

    def leave(self) -> None:
        self._in_flight -= 1

    def __repr__(self) -> str:
        where = self.origin if self._port is not None else "not started"
        return f"<UpstreamServer {where}>"

    def _prepare(self) -> None:
        self._server_tls = self._make_tls_material() if self.tls else None
        self._stopping = False

    def _cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = self._ca_cert_path = None
            self._ca = None

    @property
    def origin(self) -> str:
        """``scheme://127.0.0.1:PORT`` with no path."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style API base, ``origin + "/v1"``."""
        return self.origin + "/v1"

    @property
    def ca_cert_path(self) -> str | None:
        """PEM file of the CA that signed the server certificate (TLS only)."""
        return self._ca_cert_path

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side context that trusts this server's certificate."""
        if self._ca is None:
            raise RuntimeError("ssl_context() needs a running UpstreamServer(tls=True)")
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    def expected_embedding(self, text: str, dim: int | None = None) -> list[float]:
        """The vector the server returns for ``text`` (``embedding_dim`` long by default)."""
        return expected_embedding(text, self.embedding_dim if dim is None else dim)

    @property
    def connections_accepted(self) -> int:
        return self._stats.read("connections_accepted")

    @property
    def connections_open(self) -> int:
        return self._stats.read("connections_open")

    @property
    def max_concurrent_connections(self) -> int:
        return self._stats.read("max_concurrent_connections")

    @property
    def connections_closed_by_client(self) -> int:
        return self._stats.read("connections_closed_by_client")

    @property
    def connections_closed_by_server(self) -> int:
        return self._stats.read("connections_closed_by_server")

    @property
    def in_flight(self) -> int:
        """Requests read and not yet answered, right now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The peak of requests in flight at once (faults' delays included)."""
        return self._max_in_flight

    @property
    def requests_served(self) -> int:
        """Responses written in full (faults that drop the response are not counted)."""
        return self._stats.read("requests_served")

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request read in full, in arrival order."""
        return self._stats.requests()

    @property
    def pending_faults(self) -> int:
        """How many more requests the queued faults will still affect."""
        return self._faults.pending

    def reset(self) -> None:
        """Zero the counters and forget recorded requests; queued faults stay."""
        self._stats.reset()
        self._max_in_flight = self._in_flight

    def add_fault(self, fault: Fault) -> None:
        """Queue ``fault``; the first queued fault matching a request is applied."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def wait_until(
        self,
        predicate: Callable[[UpstreamServer], bool],
        timeout: float = 5.0,
        interval: float = 0.005,
    ) -> bool:
        """Poll ``predicate(self)`` until it is true; False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def _make_tls_material(self) -> ssl.SSLContext:
        self._ca = trustme.CA()
        certificate = self._ca.issue_cert(HOST, "localhost")
        self._tmpdir = tempfile.mkdtemp(prefix="rag-llm-upstream-")
        path = Path(self._tmpdir) / "ca.pem"
        self._ca.cert_pem.write_to_path(str(path))
        self._ca_cert_path = str(path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        context.set_alpn_protocols(["http/1.1"])
        return context

    async def _listen(self) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            functools.partial(self._new_protocol, self._server_tls), HOST, 0, backlog=_BACKLOG
        )

    def _new_protocol(self, server_tls: ssl.SSLContext | None) -> asyncio.StreamReaderProtocol:
        """Called by the loop for each accepted socket, before any byte is read."""
        connection = Connection(
            self,
            self._stats.connection_opened(),
            stats=self._stats,
            faults=self._faults,
            tls=server_tls,
            on_done=self._forget,
        )
        self._connections[connection.id] = connection
        if self._stopping:
            connection.abort()
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), connection.run)

    def _forget(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)

    async def _shutdown(self, server: asyncio.Server) -> None:
        self._stopping = True
        server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT / 2
        await asyncio.sleep(0)
        while self._connections and loop.time() < deadline:
            for connection in list(self._connections.values()):
                connection.abort()
            await asyncio.sleep(0.001)
        await server.wait_closed()
