"""Wrappers around httpcore's network backends that report every connection's life.

httpcore has no hook for a connection closing, so the socket streams themselves are
wrapped: each reports when it opened, how long TCP and TLS took, and, when closed, why
(the server had closed it, an I/O error, keep-alive expiry, or the client's own choice).
"""

# ruff: noqa: ASYNC109 - the signatures are httpcore's network-backend interface
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from rag_llm.observability.stats import ClientStats
from rag_llm.transport._linger import close_then, hold_socket
from rag_llm.transport._shared import ConnectionBudget

__all__ = ["AsyncCountingBackend", "IdleExpiry", "SyncCountingBackend", "keep_alive_timeout"]


def keep_alive_timeout(value: str | bytes) -> float | None:
    """The ``timeout`` of a ``Keep-Alive`` header value; None if absent, malformed or <= 0."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    for part in value.split(","):
        name, equals, number = part.partition("=")
        if equals and name.strip().lower() == "timeout":
            try:
                seconds = float(number.strip().strip('"'))
            except ValueError:
                return None
            return seconds if seconds > 0 and math.isfinite(seconds) else None
    return None


class IdleExpiry:
    """How long a connection may sit idle: ``keepalive_expiry``, or less once learned.

    A server's ``Keep-Alive: timeout=N`` response header says it drops connections idle
    for ``N`` seconds; closing ours first means no request goes out on a connection the
    server is about to close. One object is shared by a transport (which lowers
    ``seconds``) and its connections (which read it to count a close as ``expired``).
    """

    __slots__ = ("_lock", "configured", "hint", "learned", "seconds")

    def __init__(self, configured: float) -> None:
        self.configured = configured
        self.seconds = configured  # the effective expiry
        self.learned: float | None = None  # the smallest server timeout seen
        # The last header value parsed: an unchanged one (nginx sends it on every
        # response) is not parsed again.
        self.hint: object = None
        self._lock = threading.Lock()

    def learn(self, hint: str | bytes) -> bool:
        """Take a ``Keep-Alive`` header value into account; True if ``seconds`` went down.

        The smallest valid timeout wins: servers behind one balancer may differ.
        """
        with self._lock:
            self.hint = hint
            timeout = keep_alive_timeout(hint)
            if timeout is None or self.configured <= 0 or (
                    self.learned is not None and timeout >= self.learned):
                return False
            self.learned = timeout
            # Close a little before the server would: a request sent at the last moment
            # still has to reach it, and our close is a timer away. One second covers
            # that on any sane network; a quarter of the timeout keeps a short timeout
            # (timeout=2: 1.5 s, timeout=1: 0.75 s) useful instead of zero.
            seconds = min(self.configured, timeout - min(1.0, timeout / 4))
            if seconds >= self.seconds:
                return False
            self.seconds = seconds
            return True


class _Connection:
    """What is known about one connection when it closes."""

    __slots__ = ("budget", "closed", "eof", "error", "expiry", "last_io", "stats")

    def __init__(self, stats: ClientStats, expiry: IdleExpiry,
                 budget: ConnectionBudget | None = None) -> None:
        self.stats = stats
        self.expiry = expiry
        # The endpoint's connection budget this connection counts in, until released.
        self.budget = budget
        self.last_io = time.monotonic()
        self.eof = False
        self.error = False
        self.closed = False

    def read_done(self, data: bytes) -> None:
        self.last_io = time.monotonic()
        self.eof = self.eof or not data

    def close(self, stream: Any) -> None:
        if self.closed:
            return
        self.closed = True
        if self.error:
            reason = "error"
        elif self.eof or _readable(stream):
            reason = "server_closed"  # the server's FIN was waiting on an idle socket
        elif time.monotonic() - self.last_io >= self.expiry.seconds:
            reason = "expired"
        else:
            reason = "client"
        self.stats.connection_closed(reason)

    def hold(self, stream: Any) -> Any:
        """Before the stream closes: its socket, held open until the server closes too.

        None when there is no need (the server closed first) or no TCP socket to hold.
        """
        if self.budget is None or self.eof:
            return None
        return hold_socket(_extra(stream, "socket"))

    def release(self, held: Any = None) -> None:
        """Give the connection back to the budget once its socket is closed at both ends.

        ``held`` is what :meth:`hold` returned: the server has not closed yet, so the
        budget is given back once it has.
        """
        budget, self.budget = self.budget, None
        if budget is None:
            if held is not None:
                held.close()
        elif held is None:
            budget.give_back()
        else:
            close_then(held, budget.give_back, budget)

    def __del__(self) -> None:
        # A connection dropped without being closed must not hold the budget forever.
        self.release()


def _readable(stream: Any) -> bool:
    return bool(_extra(stream, "is_readable"))


def _extra(stream: Any, info: str) -> Any:
    try:
        return stream.get_extra_info(info)
    except Exception:
        return None


class AsyncCountingStream:
    def __init__(self, inner: Any, connection: _Connection) -> None:
        self._inner = inner
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            data: bytes = await self._inner.read(max_bytes, timeout)
        except BaseException:
            self._connection.error = True
            raise
        self._connection.read_done(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            await self._inner.write(buffer, timeout)
        except BaseException:
            self._connection.error = True
            raise

    async def aclose(self) -> None:
        connection = self._connection
        connection.close(self._inner)
        held = connection.hold(self._inner)
        try:
            await self._inner.aclose()
        finally:
            connection.release(held)

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncCountingStream:
        started = time.monotonic()
        try:
            inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            self._connection.error = True
            raise
        self._connection.stats.tls_handshake_timed(time.monotonic() - started)
        return AsyncCountingStream(inner, self._connection)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class AsyncCountingBackend:
    """Counts connections; with a ``budget``, each one waits for room in it first."""

    def __init__(self, inner: Any, stats: ClientStats, expiry: IdleExpiry,
                 budget: ConnectionBudget | None = None) -> None:
        self._inner = inner
        self._stats = stats
        self._expiry = expiry
        self._budget = budget

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> AsyncCountingStream:
        budget = self._budget
        if budget is not None:
            await budget.take()
        try:
            started = time.monotonic()
            inner = await self._inner.connect_tcp(host, port, timeout=timeout,
                                                  local_address=local_address,
                                                  socket_options=socket_options)
        except BaseException:
            if budget is not None:
                budget.give_back()
            raise
        self._stats.connection_opened(time.monotonic() - started)
        return AsyncCountingStream(inner, _Connection(self._stats, self._expiry, budget))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> Any:
        return await self._inner.connect_unix_socket(path, timeout=timeout,
                                                     socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class SyncCountingStream:
    """Sync twin of :class:`AsyncCountingStream`."""

    def __init__(self, inner: Any, connection: _Connection) -> None:
        self._inner = inner
        self._connection = connection

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            data: bytes = self._inner.read(max_bytes, timeout)
        except BaseException:
            self._connection.error = True
            raise
        self._connection.read_done(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._inner.write(buffer, timeout)
        except BaseException:
            self._connection.error = True
            raise

    def close(self) -> None:
        connection = self._connection
        connection.close(self._inner)
        held = connection.hold(self._inner)
        try:
            self._inner.close()
        finally:
            connection.release(held)

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> SyncCountingStream:
        started = time.monotonic()
        try:
            inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            self._connection.error = True
            raise
        self._connection.stats.tls_handshake_timed(time.monotonic() - started)
        return SyncCountingStream(inner, self._connection)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class SyncCountingBackend:
    """Sync twin of :class:`AsyncCountingBackend`."""

    def __init__(self, inner: Any, stats: ClientStats, expiry: IdleExpiry,
                 budget: ConnectionBudget | None = None) -> None:
        self._inner = inner
        self._stats = stats
        self._expiry = expiry
        self._budget = budget

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> SyncCountingStream:
        budget = self._budget
        if budget is not None:
            budget.take_sync()
        try:
            started = time.monotonic()
            inner = self._inner.connect_tcp(host, port, timeout=timeout,
                                            local_address=local_address,
                                            socket_options=socket_options)
        except BaseException:
            if budget is not None:
                budget.give_back()
            raise
        self._stats.connection_opened(time.monotonic() - started)
        return SyncCountingStream(inner, _Connection(self._stats, self._expiry, budget))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> Any:
        return self._inner.connect_unix_socket(path, timeout=timeout,
                                               socket_options=socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
