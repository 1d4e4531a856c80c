"""Helpers for the dashboard tests: a real uvicorn server in a thread, and steady traffic."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from rag_llm.api.dashboard import dashboard_router
from rag_llm.errors import RagLLMError
from rag_llm.pool import PoolSnapshot, all_snapshots
from rag_llm.providers import EmbeddingProvider


def dashboard_app(source: Callable[[], list[PoolSnapshot]] = all_snapshots, *,
                  interval: float = 1.0, stream_lifetime: float = 5.0) -> FastAPI:
    """An app with only the dashboard; ``source`` defaults to every live pool."""
    app = FastAPI()
    app.include_router(dashboard_router(source, interval=interval,
                                        stream_lifetime=stream_lifetime))
    return app


def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    """Poll ``predicate`` from a thread with no event loop of its own."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class AppServer:
    """``app`` served by uvicorn on 127.0.0.1 from a background thread."""

    def __init__(self, app: FastAPI) -> None:
        # log_config=None: uvicorn's records reach the root logger, where tests see them.
        config = uvicorn.Config(app, log_config=None, log_level="warning", http="h11",
                                ws="none", loop="asyncio", lifespan="on")
        self.server = uvicorn.Server(config)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self.server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> AppServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self._thread.is_alive(), "uvicorn failed to start"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        return self

    def stop(self, within: float = 10.0) -> float:
        """Ask uvicorn to shut down as on SIGTERM; the seconds it took."""
        started = time.monotonic()
        self.server.should_exit = True
        self._thread.join(within)
        assert not self._thread.is_alive(), f"uvicorn did not stop within {within} s"
        self._sock.close()
        return time.monotonic() - started

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread.is_alive():
            self.stop()
        self._sock.close()


class Traffic:
    """Calls ``provider`` until stopped: sync calls from threads, async ones on a loop."""

    def __init__(self, provider: EmbeddingProvider, threads: int = 3, tasks: int = 3) -> None:
        self.provider = provider
        self.calls = 0
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._sync_worker, daemon=True)
                         for _ in range(threads)]
        if tasks:
            self._threads.append(threading.Thread(target=asyncio.run,
                                                  args=(self._async_workers(tasks),),
                                                  daemon=True))

    def _count(self, failed: bool) -> None:
        with self._lock:
            self.calls += 1
            self.failures += failed

    def _sync_worker(self) -> None:
        while not self._stop.is_set():
            try:
                self.provider.embed(["sync traffic"])
            except RagLLMError:
                self._count(True)
            else:
                self._count(False)

    async def _async_workers(self, tasks: int) -> None:
        async def worker() -> None:
            while not self._stop.is_set():
                try:
                    await self.provider.aembed(["async traffic"])
                except RagLLMError:
                    self._count(True)
                else:
                    self._count(False)

        await asyncio.gather(*(worker() for _ in range(tasks)))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
            assert not thread.is_alive(), "a traffic worker did not stop"
