"""What every test server here shares: a listener on 127.0.0.1 served by an asyncio loop of
its own in a daemon thread, started and stopped from the test's thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Final, Self

__all__ = ["HOST", "STOP_TIMEOUT", "BackgroundServer"]

HOST: Final = "127.0.0.1"
_START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 10.0


class BackgroundServer:
    """``start()`` binds an ephemeral port and serves in a thread; ``stop()`` (or the end of
    a ``with`` block) runs the subclass's ``_shutdown`` in that loop and joins the thread.

    Subclasses implement ``_listen`` (the server, made in the loop) and ``_shutdown``;
    ``_prepare`` and ``_cleanup`` run in the caller's thread before the start and after
    the stop.
    """

    def __init__(self) -> None:
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _prepare(self) -> None:
        """Before the thread starts (in the caller's thread)."""

    def _cleanup(self) -> None:
        """After the thread stopped (in the caller's thread)."""

    async def _listen(self) -> asyncio.Server:
        raise NotImplementedError

    async def _shutdown(self, server: asyncio.Server) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Bind an ephemeral port and serve in a background thread."""
        name = type(self).__name__
        if self._thread is not None:
            raise RuntimeError(f"{name} is already started")
        self._prepare()
        self._started.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            self.stop()
            raise RuntimeError(f"{name} did not start in time")
        if self._start_error is not None:
            error = self._start_error
            self.stop()
            raise RuntimeError(f"{name} failed to start") from error
        return self

    def stop(self) -> None:
        """Close every connection and the listener, then join the loop thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed after a start failure
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"{type(self).__name__} thread did not stop in time")
        self._thread = self._loop = self._stop_event = None
        self._port = None
        self._cleanup()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._start_error = exc
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        server = await self._listen()
        self._port = server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._shutdown(server)
