"""One accepted connection: HTTP/1.1 framing with h11, replies and fault injection."""

from __future__ import annotations

import asyncio
import http
import json
import socket
import ssl
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import h11

from rag_llm.testing._faults import Fault, FaultQueue
from rag_llm.testing._openai import Reply, error_body, error_reply, json_reply, route
from rag_llm.testing._records import RecordedRequest, Stats

if TYPE_CHECKING:
    from rag_llm.testing._server import UpstreamServer

_READ_SIZE = 65536
_CLOSE_GRACE = 1.0
_TLS_HANDSHAKE_TIMEOUT = 10.0


class _ClientClosed(Exception):
    """The client closed its side of the connection."""


class Connection:
    """Serves the requests of one TCP connection until either side closes it.

    Every connection is counted closed exactly once: by the client (EOF or a
    socket error) or by the server (idle timeout, ``Connection: close``, a
    fault, a malformed request, or ``stop()``).
    """

    def __init__(
        self,
        server: UpstreamServer,
        connection_id: int,
        *,
        stats: Stats,
        faults: FaultQueue,
        tls: ssl.SSLContext | None,
        on_done: Callable[[Connection], None],
    ) -> None:
        self.id = connection_id
        self._server = server
        self._stats = stats
        self._faults = faults
        self._tls = tls
        self._on_done = on_done
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[Any] | None = None
        self._counted_closed = False
        self._aborted = False

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Stream callback: serve the connection, then release it."""
        self._writer = writer
        self._task = asyncio.current_task()
        try:
            if not self._aborted:
                await self._run(reader, writer)
        except asyncio.CancelledError:
            pass  # abort() cancelled us while the server stops.
        finally:
            self._count_closed(by_client=False)
            writer.transport.abort()
            self._on_done(self)

    def abort(self) -> None:
        """Drop the connection at once; used by ``stop()``."""
        if self._aborted:
            return
        self._aborted = True
        self._count_closed(by_client=False)
        if self._writer is not None:
            self._writer.transport.abort()
        if self._task is not None:
            self._task.cancel()

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._tls is not None:
                await writer.start_tls(self._tls, ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT)
            await self._serve(reader, writer)
        except (OSError, _ClientClosed):
            self._count_closed(by_client=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        nth = 0
        while True:
            try:
                received = await self._read_request(conn, reader, writer)
            except h11.RemoteProtocolError as exc:
                await self._reject(conn, writer, exc)
                return
            if received is None:
                await self._close(writer)
                return
            nth += 1
            request = self._record(*received, nth)
            fault = self._faults.take(request.path, nth)
            overloaded = not self._server.admit()
            try:
                delay = self._server.delay + (fault.delay if fault is not None else 0.0)
                if delay > 0:
                    await asyncio.sleep(delay)
                if fault is not None and fault.action != "respond":
                    await self._misbehave(fault, request, conn, reader, writer)
                    return
                reply = (_OVERLOADED if overloaded else _fault_reply(fault) if fault is not None
                         else self._route(request))
                await self._send_reply(conn, writer, reply, request)
            finally:
                self._server.leave()
            if conn.our_state is h11.MUST_CLOSE:
                await self._close(writer)
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request, bytes] | None:
        """Read one whole request; ``None`` when the connection idled out first."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    continue_ = h11.InformationalResponse(status_code=100, headers=[])
                    writer.write(conn.send(continue_) or b"")
                idle = conn.their_state is h11.IDLE
                try:
                    async with asyncio.timeout(self._server.idle_timeout if idle else None):
                        data = await reader.read(_READ_SIZE)
                except TimeoutError:
                    return None
                if not data:
                    raise _ClientClosed
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClientClosed
            else:
                raise h11.RemoteProtocolError(f"unexpected event {event!r}")

    def _record(self, request: h11.Request, body: bytes, nth: int) -> RecordedRequest:
        target = urlsplit(request.target.decode("latin-1"))
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        recorded = RecordedRequest(
            method=request.method.decode("latin-1"),
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers},
            json=payload,
            connection_id=self.id,
            nth_on_connection=nth,
            body=body,
        )
        self._stats.request_received(recorded)
        return recorded

    def _route(self, request: RecordedRequest) -> Reply:
        return route(
            request, api_key=self._server.api_key, embedding_dim=self._server.embedding_dim
        )

    async def _misbehave(
        self,
        fault: Fault,
        request: RecordedRequest,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if fault.action == "blackhole":
            while await reader.read(_READ_SIZE):
                pass
            raise _ClientClosed
        if fault.action == "truncate_stream":
            await self._send_reply(conn, writer, self._route(request), request, truncate=True)
            await self._close(writer)
        elif fault.action == "reset":
            self._count_closed(by_client=False)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            await self._close(writer)

    async def _send_reply(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reply: Reply,
        request: RecordedRequest,
        *,
        truncate: bool = False,
    ) -> None:
        """Write ``reply``; counters move before the last byte so clients never race them."""
        head = h11.Response(
            status_code=reply.status,
            headers=self._headers(reply, request),
            reason=_reason(reply.status),
        )
        data = conn.send(head) or b""
        if reply.events is None:
            body = reply.body[: len(reply.body) // 2] if truncate else reply.body
            if body:
                data += conn.send(h11.Data(data=body)) or b""
        else:
            interval = self._server.stream_interval
            for event in reply.events[:1] if truncate else reply.events:
                writer.write(data + (conn.send(h11.Data(data=event)) or b""))
                data = b""
                await writer.drain()
                if interval > 0 and not truncate:
                    await asyncio.sleep(interval)
        if not truncate:
            data += conn.send(h11.EndOfMessage()) or b""
            self._stats.response_completed()
            if conn.our_state is h11.MUST_CLOSE:
                self._count_closed(by_client=False)
        writer.write(data)
        await writer.drain()

    def _headers(self, reply: Reply, request: RecordedRequest) -> list[tuple[str, str]]:
        headers = [
            *reply.headers,
            ("x-upstream-connection-id", str(self.id)),
            ("x-upstream-request-nth", str(request.nth_on_connection)),
        ]
        if reply.events is not None:
            headers.append(("transfer-encoding", "chunked"))
        elif reply.status not in (204, 304):
            headers.append(("content-length", str(len(reply.body))))
        keep_alive = self._server.keep_alive_header
        if keep_alive is not None and "close" not in request.headers.get("connection", "").lower():
            headers.append(("keep-alive", f"timeout={keep_alive}"))
        return headers

    async def _reject(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
    ) -> None:
        """Answer a malformed request with an error status, then close."""
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            reply = error_reply(exc.error_status_hint, f"Malformed HTTP request: {exc}")
            headers = [*reply.headers, ("content-length", str(len(reply.body)))]
            head = h11.Response(status_code=reply.status, headers=headers)
            data = conn.send(head) or b""
            data += conn.send(h11.Data(data=reply.body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            writer.write(data)
        await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close from the server side, letting buffered bytes and TLS close_notify go out."""
        self._count_closed(by_client=False)
        writer.close()
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await writer.wait_closed()
        except OSError:
            pass

    def _count_closed(self, *, by_client: bool) -> None:
        if not self._counted_closed:
            self._counted_closed = True
            self._stats.connection_closed(by_client=by_client)


def _fault_reply(fault: Fault) -> Reply:
    """The reply a ``respond`` fault asks for."""
    headers = list(fault.headers.items())
    if fault.status in (204, 304):
        return Reply(fault.status, tuple(headers))
    if fault.content is not None:
        return Reply(fault.status, tuple(headers), fault.content)
    if fault.events is not None:
        return Reply(fault.status, tuple(headers), events=fault.events)
    body = fault.body or error_body(fault.status, f"Injected fault: HTTP {fault.status}")
    return json_reply(fault.status, body, headers)


_OVERLOADED = json_reply(503, error_body(503, "Over capacity: too many requests in flight"))


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
