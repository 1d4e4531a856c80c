"""Async and sync transports on pyreqwest: Rust's reqwest, hyper and rustls.

pyreqwest's pool (hyper's) has a cap on idle connections and an idle expiry, but no hook
for a connection opening or closing and no count of the connections it holds. So:

* calls are admitted by the endpoint's shared slots (``max_connections``, waited for up
  to ``pool_timeout``): calls in flight and the wait for a slot are counted exactly;
* connections are not seen at all; the figures a pool reports (opened, closed, active,
  idle) come from :class:`PoolModel`, which replays hyper's rules on the calls it sees,
  and are marked estimated (``ClientStats.connections_estimated``) wherever shown;
* a stale keep-alive connection is resent by hyper itself, unseen (``resent`` stays 0).

``http2 = true`` offers HTTP/2 by ALPN (hyper's h2, one connection for every call); the
model follows the protocol the responses came over.

TLS is rustls: ``verify=False`` accepts any certificate, a CA path adds that bundle to
the system's roots. reqwest reads proxy settings from the environment unless told not
to; like the other transports this one uses none.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from types import ModuleType
from typing import Any

from rag_llm import errors
from rag_llm.observability.stats import ClientStats
from rag_llm.transport import (
    ConnectionCounts,
    Request,
    Response,
    TransportSettings,
    declared_length,
    pool_timeout_error,
    response_too_large,
)
from rag_llm.transport._pool_model import PoolModel
from rag_llm.transport._shared import EndpointLimits
from rag_llm.transport._translate import ErrorTranslator

__all__ = ["PyreqwestBackend", "client_closed", "split_lines"]

# After a client closes, pyreqwest's runtime thread still winds its connections down for a
# few milliseconds; an interpreter that finalizes meanwhile aborts ("PyGILState_Release":
# seen in 1 run of 3 when the close came last, none with 5 ms between). So exit waits
# this long after the last close.
_EXIT_GRACE = 0.05
# Headers that carry a credential (OpenAI, Azure, and their proxies).
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})
_last_close: list[float] = []
_CONNECTION_ERRORS = (errors.ConnectError, errors.ConnectTimeoutError, errors.ConnectionLostError)


def client_closed() -> None:
    """Note a pyreqwest client's close: the interpreter's exit waits out its wind-down."""
    if not _last_close:
        atexit.register(_wait_for_wind_down)
        _last_close.append(0.0)
    _last_close[0] = time.monotonic()


def _wait_for_wind_down() -> None:
    left = _last_close[0] + _EXIT_GRACE - time.monotonic()
    if left > 0:
        time.sleep(left)


def split_lines(buffer: bytearray, chunk: bytes) -> list[str]:
    """Append ``chunk`` to ``buffer``; the complete lines now in it, without line endings.
    Invalid UTF-8 becomes U+FFFD, as the SSE standard says and the other transports do."""
    buffer += chunk
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buffer[:end]).split(b"\n")
    del buffer[:end + 1]
    return [line.rstrip(b"\r").decode("utf-8", "replace") for line in lines]


class _Translator(ErrorTranslator):
    """Maps pyreqwest exceptions to rag-llm's.

    pyreqwest reports a read timeout before response headers as a connect timeout, and a
    connection the server dropped mid-request as a connect error; hyper's cause chain
    says which phase failed ("client error (Connect)" only while connecting).
    """

    def __init__(self, module: ModuleType, settings: TransportSettings) -> None:
        self.m = module
        self.settings = settings
        self.catches = (module.PyreqwestError,)

    def __call__(self, exc: BaseException, request: Request) -> errors.RagLLMError:
        m, s = self.m, self.settings
        where = {"provider": s.provider, "endpoint": request.endpoint}
        connecting = _while_connecting(exc)
        if isinstance(exc, m.PoolTimeoutError):
            return pool_timeout_error(s, request)
        if isinstance(exc, m.ConnectTimeoutError) and connecting:
            return errors.ConnectTimeoutError(
                f"connecting took longer than connect_timeout={s.timeouts.connect:g}s", **where
            )
        if isinstance(exc, m.WriteTimeoutError):
            return errors.WriteTimeoutError(
                f"sending took longer than write_timeout={s.timeouts.write:g}s", **where
            )
        if isinstance(exc, m.RequestTimeoutError):
            return errors.ReadTimeoutError(
                f"no data within read_timeout={s.timeouts.read:g}s", **where
            )
        if isinstance(exc, m.ConnectError) and connecting:
            return errors.ConnectError(f"cannot connect: {_last_cause(exc)}", **where)
        if isinstance(exc, m.NetworkError | m.BodyDecodeError):
            return errors.ConnectionLostError(f"connection lost: {_last_cause(exc)}", **where)
        return errors.TransportError(f"{type(exc).__name__}: {_last_cause(exc)}", **where)


def _causes(exc: BaseException) -> list[str]:
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    return [str(c.get("message", "")) for c in causes or ()]


def _while_connecting(exc: BaseException) -> bool:
    return any(c == "client error (Connect)" or c == "tcp connect error" for c in _causes(exc))


def _closed_unanswered(exc: BaseException) -> bool:
    """hyper's "connection closed before message completed": no response came back."""
    return "connection closed before message completed" in _causes(exc)


def _last_cause(exc: BaseException) -> str:
    causes = _causes(exc)
    return causes[-1] if causes else str(exc)


@functools.cache
def _ca_pem(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _max_idle(settings: TransportSettings) -> int:
    """hyper's idle cap: ``max_connections``, not ``max_keepalive_connections``.

    hyper closes a returned connection at once when its idle list is full, so a cap below
    the calls in flight churns a connection on almost every call; and it cannot close
    surplus idle connections later, after a grace, as the other transports do. So idle
    connections beyond ``max_keepalive_connections`` stay until ``keepalive_expiry``.
    """
    return max(settings.limits.max_keepalive_connections, settings.limits.max_connections)


def _configure(builder: Any, settings: TransportSettings) -> Any:
    limits, timeouts = settings.limits, settings.timeouts
    keep = limits.keepalive_expiry > 0 and limits.max_keepalive_connections > 0
    builder = (
        builder.no_proxy()
        .follow_redirects(False)
        .referer(False)
        .gzip(False).brotli(False).zstd(False).deflate(False)
        .connect_timeout(timedelta(seconds=timeouts.connect))
        .read_timeout(timedelta(seconds=timeouts.read))
        .pool_max_idle_per_host(_max_idle(settings) if keep else 0)
        .pool_idle_timeout(timedelta(seconds=limits.keepalive_expiry) if keep else None)
    )
    if settings.verify is False:
        builder = builder.danger_accept_invalid_certs(True)
    elif isinstance(settings.verify, str):
        builder = builder.add_root_certificate_pem(_ca_pem(settings.verify))
    # HTTP/2 by ALPN over TLS, HTTP/1.1 from servers without it and over plain http://,
    # as on httpx2.
    return builder.http2(True) if settings.http2 else builder.http1_only()


def _build(client: Any, request: Request, streamed: bool) -> Any:
    builder = client.request(request.method, request.url)
    for name, value in request.headers.items():
        # Marked sensitive, pyreqwest masks a credential in any repr of the request.
        builder = builder.header(name, value, is_sensitive=name.lower() in _SECRET_HEADERS)
    if request.content is not None:
        builder = builder.body_bytes(request.content)
    if request.timeout is not None:
        builder = builder.timeout(timedelta(seconds=max(request.timeout, 0.001)))
    if not streamed:
        return builder.build()
    # pyreqwest reads a streamed body ahead, up to 64 KiB by default, before the response
    # is handed over: a stream's first events would wait for that, and a stream cut
    # within it would lose the text before the cut. Unbuffered, each chunk passes at once.
    return builder.streamed_read_buffer_limit(0).build_streamed()


def _headers(response: Any) -> dict[str, str]:
    return {name: value for name, value in response.headers.items()}


async def _read_capped(response: Any, request: Request, settings: TransportSettings) -> bytes:
    """The whole body, refused past ``max_response_bytes``: by its ``content-length``
    before reading, else counted chunk by chunk as it arrives."""
    limit = settings.max_response_bytes
    declared = declared_length(_headers(response))
    if declared is not None:
        if declared > limit:
            raise response_too_large(settings, request, declared)
        return bytes(await response.bytes())
    reader = response.body_reader
    chunks: list[bytes] = []
    size = 0
    while (chunk := await reader.read_chunk()) is not None:
        size += len(chunk)
        if size > limit:
            raise response_too_large(settings, request)
        chunks.append(bytes(chunk))
    return b"".join(chunks)


def _read_capped_sync(response: Any, request: Request, settings: TransportSettings) -> bytes:
    """Sync twin of :func:`_read_capped`."""
    limit = settings.max_response_bytes
    declared = declared_length(_headers(response))
    if declared is not None:
        if declared > limit:
            raise response_too_large(settings, request, declared)
        return bytes(response.bytes())
    reader = response.body_reader
    chunks: list[bytes] = []
    size = 0
    while (chunk := reader.read_chunk()) is not None:
        size += len(chunk)
        if size > limit:
            raise response_too_large(settings, request)
        chunks.append(bytes(chunk))
    return b"".join(chunks)


class _Admission:
    """What the async and sync transports share: admission, the pool model, errors."""

    def __init__(self, builder: Any, translate: _Translator, stats: ClientStats,
                 limits: EndpointLimits | None) -> None:
        settings = translate.settings
        self._settings = settings
        self._stats = stats
        stats.connections_estimated = True
        self._limits = limits if limits is not None else EndpointLimits(
            settings.limits.max_connections, settings.timeouts.pool)
        self._model = PoolModel(stats, _max_idle(settings), settings.limits.keepalive_expiry,
                                multiplexed=settings.http2)
        self._translate = translate
        self._closed = False
        try:
            self._client = _configure(builder, settings).build()
        except RuntimeError as exc:
            if "fork" not in str(exc):
                raise
            # pyreqwest's runtime does not survive fork(), and it refuses to restart.
            raise errors.ConfigError(
                "transport", "pyreqwest", "cannot open clients in a process forked after "
                "pyreqwest started; make the first call after forking, or use the 'spawn' "
                "start method",
            ) from None

    def _admitted(self, started: float) -> bool:
        self._stats.wait_ended(time.monotonic() - started)
        return self._model.start()

    def _stale(self, exc: BaseException, attempt: int, reused: bool) -> bool:
        """Whether to resend: a reused connection was closed before any response.

        hyper resends on its own only a request it had not yet written; this covers the
        one the server took, then closed the idle connection on. "Reused" is the model's
        word, so a fresh connection closed unanswered may be resent once too.
        """
        if attempt == 1 and reused and _closed_unanswered(exc):
            self._stats.request_resent()
            self._model.replaced()
            return True
        return False

    def _failed(self, exc: BaseException, request: Request) -> tuple[errors.RagLLMError, bool]:
        """rag-llm's error for ``exc``, and whether it lost the connection (connecting
        failed, or the connection was cut), which an HTTP/2 connection's other calls share."""
        error = self._translate(exc, request)
        return error, isinstance(error, _CONNECTION_ERRORS)

    def _spoke(self, response: Any) -> None:
        if self._model.multiplexed:
            self._model.spoke(response.version)

    def _pool_timeout(self, started: float, request: Request) -> errors.PoolTimeoutError:
        self._stats.wait_ended(time.monotonic() - started)
        return pool_timeout_error(self._settings, request)

    def _release(self, kept: bool, lost: bool) -> None:
        self._model.end(kept, lost=lost)
        self._limits.requests.release(self)

    def release_idle(self) -> None:
        """Nothing to close: hyper's idle connections cannot be closed one by one."""

    def connections(self) -> ConnectionCounts:
        return self._model.counts()


class _AsyncStream:
    def __init__(self, response: Any, request: Request, translate: _Translator,
                 settings: TransportSettings) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self._settings = settings
        self.status: int = response.status
        self.headers: Mapping[str, str] = _headers(response)
        # The body was read to its end: only then can hyper reuse the connection.
        self.done = False

    async def aiter_lines(self) -> AsyncIterator[str]:
        reader = self._response.body_reader
        buffer = bytearray()
        with self._translate.around(self._request):
            while (chunk := await reader.read_chunk()) is not None:
                for line in split_lines(buffer, bytes(chunk)):
                    yield line
        self.done = True
        if buffer:
            yield buffer.rstrip(b"\r").decode("utf-8", "replace")

    async def aread(self) -> bytes:
        with self._translate.around(self._request):
            content = await _read_capped(self._response, self._request, self._settings)
        self.done = True
        return content


class _SyncStream:
    def __init__(self, response: Any, request: Request, translate: _Translator,
                 settings: TransportSettings) -> None:
        self._response = response
        self._request = request
        self._translate = translate
        self._settings = settings
        self.status: int = response.status
        self.headers: Mapping[str, str] = _headers(response)
        # The body was read to its end: only then can hyper reuse the connection.
        self.done = False

    def iter_lines(self) -> Iterator[str]:
        reader = self._response.body_reader
        buffer = bytearray()
        with self._translate.around(self._request):
            while (chunk := reader.read_chunk()) is not None:
                yield from split_lines(buffer, bytes(chunk))
        self.done = True
        if buffer:
            yield buffer.rstrip(b"\r").decode("utf-8", "replace")

    def read(self) -> bytes:
        with self._translate.around(self._request):
            content = _read_capped_sync(self._response, self._request, self._settings)
        self.done = True
        return content


class PyreqwestAsyncTransport(_Admission):
    """A pooled pyreqwest ``Client``; its I/O runs on pyreqwest's own runtime thread."""

    async def _admit(self, request: Request) -> bool:
        if self._closed:
            raise errors.TransportError("transport is closed", provider=self._settings.provider,
                                        endpoint=request.endpoint)
        started = time.monotonic()
        self._stats.wait_started()
        try:
            await self._limits.admit(self)
        except TimeoutError:
            raise self._pool_timeout(started, request) from None
        except BaseException:
            self._stats.wait_ended(time.monotonic() - started)
            raise
        return self._admitted(started)

    async def send(self, request: Request) -> Response:
        reused = await self._admit(request)
        kept = lost = False
        try:
            for attempt in (1, 2):
                try:
                    response = await _build(self._client, request, False).send()
                    content = await _read_capped(response, request, self._settings)
                except self._translate.catches as exc:
                    if self._stale(exc, attempt, reused):
                        continue
                    error, lost = self._failed(exc, request)
                    raise error from exc
                self._spoke(response)
                kept = True
                return Response(response.status, _headers(response), content)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._release(kept, lost)

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[_AsyncStream]:
        reused = await self._admit(request)
        kept = lost = False
        try:
            for attempt in (1, 2):
                streamed = _build(self._client, request, True)
                try:
                    response = await streamed.__aenter__()
                    break
                except self._translate.catches as exc:
                    if not self._stale(exc, attempt, reused):
                        error, lost = self._failed(exc, request)
                        raise error from exc
            self._spoke(response)
            body = _AsyncStream(response, request, self._translate, self._settings)
            try:
                yield body
            finally:
                kept = body.done
                with self._translate.around(request):
                    await streamed.__aexit__(None, None, None)
        finally:
            self._release(kept, lost)

    async def prune(self) -> None:
        self._model.prune()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._limits.connections.unregister(self)
        try:
            await self._client.close()
        finally:
            client_closed()
        self._model.close()


class PyreqwestSyncTransport(_Admission):
    """A pooled pyreqwest ``SyncClient``; safe to share between threads."""

    def _admit(self, request: Request) -> bool:
        if self._closed:
            raise errors.TransportError("transport is closed", provider=self._settings.provider,
                                        endpoint=request.endpoint)
        started = time.monotonic()
        self._stats.wait_started()
        try:
            self._limits.admit_sync(self)
        except TimeoutError:
            raise self._pool_timeout(started, request) from None
        except BaseException:
            self._stats.wait_ended(time.monotonic() - started)
            raise
        return self._admitted(started)

    def send(self, request: Request) -> Response:
        reused = self._admit(request)
        kept = lost = False
        try:
            for attempt in (1, 2):
                try:
                    response = _build(self._client, request, False).send()
                    content = _read_capped_sync(response, request, self._settings)
                except self._translate.catches as exc:
                    if self._stale(exc, attempt, reused):
                        continue
                    error, lost = self._failed(exc, request)
                    raise error from exc
                self._spoke(response)
                kept = True
                return Response(response.status, _headers(response), content)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._release(kept, lost)

    @contextmanager
    def stream(self, request: Request) -> Iterator[_SyncStream]:
        reused = self._admit(request)
        kept = lost = False
        try:
            for attempt in (1, 2):
                streamed = _build(self._client, request, True)
                try:
                    response = streamed.__enter__()
                    break
                except self._translate.catches as exc:
                    if not self._stale(exc, attempt, reused):
                        error, lost = self._failed(exc, request)
                        raise error from exc
            self._spoke(response)
            body = _SyncStream(response, request, self._translate, self._settings)
            try:
                yield body
            finally:
                kept = body.done
                with self._translate.around(request):
                    streamed.__exit__(None, None, None)
        finally:
            self._release(kept, lost)

    def prune(self) -> None:
        self._model.prune()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._limits.connections.unregister(self)
        try:
            self._client.close()
        finally:
            client_closed()
        self._model.close()


def _import() -> tuple[ModuleType, ModuleType]:
    """pyreqwest's client and exceptions modules, or the error that names the extra."""
    try:
        return (importlib.import_module("pyreqwest.client"),
                importlib.import_module("pyreqwest.exceptions"))
    except ImportError:
        raise errors.ConfigError(
            "transport", "pyreqwest",
            "needs the 'pyreqwest' package: pip install 'rag-llm[native]'",
        ) from None


class PyreqwestBackend:
    """Backend for ``transport = "pyreqwest"``, async and sync."""

    def __init__(self) -> None:
        self.name = "pyreqwest"
        self.async_library = self.sync_library = "pyreqwest"
        self._client, self._exceptions = _import()

    def open_async(self, settings: TransportSettings, stats: ClientStats,
                   limits: EndpointLimits | None = None) -> PyreqwestAsyncTransport:
        return PyreqwestAsyncTransport(self._client.ClientBuilder(),
                                       _Translator(self._exceptions, settings), stats, limits)

    def open_sync(self, settings: TransportSettings, stats: ClientStats,
                  limits: EndpointLimits | None = None) -> PyreqwestSyncTransport:
        return PyreqwestSyncTransport(self._client.SyncClientBuilder(),
                                      _Translator(self._exceptions, settings), stats, limits)
