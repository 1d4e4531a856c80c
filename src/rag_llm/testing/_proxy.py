"""FaultProxy: a TCP proxy on 127.0.0.1 that injects Toxiproxy's faults, in-process.

Each accepted connection is piped to the target port in both directions; the toxics in
force shape the bytes on the way. A connection draws once, per toxic, whether that toxic
applies to it (``probability``), so a retry on a new connection may pass where the first
attempt failed. Toxics may be added and removed from the test thread at any time; a
connection already open draws for a new toxic the first time it sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from rag_llm.testing._background import HOST, STOP_TIMEOUT, BackgroundServer

_BACKLOG = 2048
_READ_SIZE = 65536
_FLUSH_TIMEOUT = 1.0
_QUEUED_CHUNKS = 64
_HOLD_POLL = 0.01

Direction = Literal["upstream", "downstream"]
_DIRECTIONS = ("upstream", "downstream")


def _check(name: str, value: object, ok: bool, reason: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: {reason}")


def _check_number(name: str, value: object, *, minimum: float = 0.0) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    _check(name, value, is_number, "must be a number")
    assert isinstance(value, (int, float))
    _check(name, value, value == value and value >= minimum, f"must be >= {minimum:g}")


@dataclass(frozen=True)
class Toxic:
    """A fault applied to a share of connections (``probability``) in one ``direction``.

    ``upstream`` is the client's bytes on their way to the target, ``downstream`` the
    target's bytes on their way to the client.
    """

    probability: float = field(default=1.0, kw_only=True)
    direction: Direction = field(default="downstream", kw_only=True)

    def __post_init__(self) -> None:
        _check_number("probability", self.probability)
        _check("probability", self.probability, self.probability <= 1, "must be <= 1")
        _check("direction", self.direction, self.direction in _DIRECTIONS,
               "must be 'upstream' or 'downstream'")

    @property
    def kind(self) -> str:
        """The name counted in ``FaultProxy.faults_applied``: ``latency``, ``reset_peer``..."""
        return _KINDS[type(self)]


@dataclass(frozen=True)
class Latency(Toxic):
    """Delay every chunk by ``seconds`` plus a uniform draw in [-jitter, +jitter]."""

    seconds: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("seconds", self.seconds)
        _check_number("jitter", self.jitter)


@dataclass(frozen=True)
class Bandwidth(Toxic):
    """Cap the throughput at ``bytes_per_s``."""

    bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("bytes_per_s", self.bytes_per_s)
        _check("bytes_per_s", self.bytes_per_s, self.bytes_per_s > 0, "must be > 0")


@dataclass(frozen=True)
class ResetPeer(Toxic):
    """Once ``after_bytes`` bytes have passed in ``direction``, reset the client's connection
    with a TCP RST (SO_LINGER 0) and drop the target's; ``after_bytes=0`` resets on the first
    byte. The default direction is upstream: the request never reaches the target."""

    after_bytes: int = 0
    direction: Direction = field(default="upstream", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("after_bytes", self.after_bytes,
               isinstance(self.after_bytes, int) and not isinstance(self.after_bytes, bool)
               and self.after_bytes >= 0, "must be an integer >= 0")


@dataclass(frozen=True)
class Blackhole(Toxic):
    """Swallow every byte in ``direction``; the connection stays open, nothing answers.
    The default direction is upstream: requests are accepted and never reach the target."""

    direction: Direction = field(default="upstream", kw_only=True)


@dataclass(frozen=True)
class SlowClose(Toxic):
    """Pass an end of stream (FIN) in ``direction`` on only after ``delay`` seconds."""

    delay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("delay", self.delay)


@dataclass(frozen=True)
class Slicer(Toxic):
    """Write the bytes as TCP segments of ``size`` to ``max_size`` bytes (uniform draw;
    ``max_size`` defaults to ``size``), sleeping ``delay`` seconds between two segments."""

    size: int = 1
    max_size: int | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("size", self.size, isinstance(self.size, int) and not isinstance(self.size, bool)
               and self.size >= 1, "must be an integer >= 1")
        if self.max_size is not None:
            _check("max_size", self.max_size, isinstance(self.max_size, int)
                   and not isinstance(self.max_size, bool) and self.max_size >= self.size,
                   f"must be an integer >= size={self.size}")
        _check_number("delay", self.delay)


@dataclass(frozen=True)
class LimitData(Toxic):
    """Close both connections (FIN, no RST) once ``n_bytes`` bytes have passed in
    ``direction``."""

    n_bytes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("n_bytes", self.n_bytes, isinstance(self.n_bytes, int)
               and not isinstance(self.n_bytes, bool) and self.n_bytes >= 0,
               "must be an integer >= 0")


@dataclass(frozen=True)
class Timeout(Toxic):
    """Stop every byte in ``direction`` (an end of stream too), then close both connections
    (FIN) ``seconds`` after the toxic began to apply to the connection: at accept, or, for
    a toxic added later, at the connection's next chunk. With ``seconds=0`` the connection
    stays open and its bytes are dropped until the toxic is removed (Toxiproxy's
    ``timeout``)."""

    seconds: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("seconds", self.seconds)


_KINDS: dict[type[Toxic], str] = {
    Toxic: "toxic", Latency: "latency", Bandwidth: "bandwidth", ResetPeer: "reset_peer",
    Blackhole: "blackhole", SlowClose: "slow_close", Slicer: "slicer", LimitData: "limit_data",
    Timeout: "timeout",
}


class _Cut(Exception):
    """A toxic ended the connection; ``reset`` says whether with an RST."""

    def __init__(self, reset: bool) -> None:
        super().__init__("reset" if reset else "closed")
        self.reset = reset


class _Link:
    """One proxied connection: the per-toxic draws and the bytes passed each way."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._loop = asyncio.get_running_loop()
        self._drawn: dict[int, tuple[Toxic, bool]] = {}
        self._counted: set[int] = set()
        self.passed = {"upstream": 0, "downstream": 0}
        # When each Timeout drawn for this connection began to apply; set on a new one.
        self._timeouts_since: dict[int, float] = {}
        self.timeouts_changed = asyncio.Event()
        self.active(None)  # draw for the toxics in force at accept, in their order

    def active(self, direction: str | None) -> list[Toxic]:
        """The toxics applying to this connection now (in ``direction``, if given)."""
        chosen = []
        for toxic in self._proxy.toxics:
            entry = self._drawn.get(id(toxic))
            if entry is None or entry[0] is not toxic:
                entry = (toxic, self._proxy.draw(toxic.probability))
                self._drawn[id(toxic)] = entry
                if entry[1] and isinstance(toxic, Timeout):
                    self._timeouts_since[id(toxic)] = self._loop.time()
                    self.timeouts_changed.set()
            if entry[1] and (direction is None or toxic.direction == direction):
                chosen.append(toxic)
        return chosen

    def next_timeout(self) -> tuple[Timeout, float] | None:
        """The Timeout in force (``seconds > 0``) that closes this connection first, and
        the loop time when it does."""
        due = [(toxic, self._timeouts_since[id(toxic)] + toxic.seconds)
               for toxic in self.active(None)
               if isinstance(toxic, Timeout) and toxic.seconds > 0]
        return min(due, key=lambda pair: pair[1], default=None)

    def applied(self, toxic: Toxic) -> None:
        """Count ``toxic`` once for this connection, when it first acts."""
        if id(toxic) not in self._counted:
            self._counted.add(id(toxic))
            self._proxy.count(toxic.kind)


class FaultProxy(BackgroundServer):
    """A TCP proxy from an ephemeral port on 127.0.0.1 to ``host:target_port``.

    It runs its own asyncio loop in a daemon thread (sync ``with``, or ``start()`` /
    ``stop()``); toxics are set from any thread with ``add()``, ``remove()`` and
    ``clear()``. ``seed`` makes the per-connection draws (and jitter, slice sizes)
    reproducible for a given order of connections.
    """

    def __init__(self, target_port: int, host: str = HOST, *, seed: int | None = None) -> None:
        _check("target_port", target_port, isinstance(target_port, int)
               and not isinstance(target_port, bool) and 0 < target_port < 65536,
               "must be a TCP port number (1-65535)")
        super().__init__()
        self.target_port = target_port
        self.host = host
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault draws, not secrets
        self._lock = threading.Lock()
        self._toxics: tuple[Toxic, ...] = ()
        self._faults: Counter[str] = Counter()
        self._accepted = 0
        self._open = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()

    # -- lifecycle ---------------------------------------------------------------------

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "not started"
        return f"<FaultProxy {where} -> {self.host}:{self.target_port}>"

    def url(self, scheme: str = "http", path: str = "") -> str:
        """``scheme://127.0.0.1:PORT`` followed by ``path``."""
        return f"{scheme}://{HOST}:{self.port}{path}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style API base through the proxy, ``http://127.0.0.1:PORT/v1``."""
        return self.url("http", "/v1")

    # -- toxics and counters -----------------------------------------------------------

    @property
    def toxics(self) -> tuple[Toxic, ...]:
        """The toxics in force, in the order they apply."""
        return self._toxics

    def add(self, toxic: Toxic) -> Toxic:
        """Put ``toxic`` in force (after those already there); returns it, for ``remove()``."""
        if not isinstance(toxic, Toxic):
            raise TypeError(f"toxic={toxic!r}: must be a Toxic (Latency, ResetPeer...)")
        with self._lock:
            self._toxics = (*self._toxics, toxic)
        return toxic

    def remove(self, toxic: Toxic) -> None:
        """Take ``toxic`` out of force: that very object, else the first one equal to it."""
        with self._lock:
            toxics = list(self._toxics)
            index = next((i for i, t in enumerate(toxics) if t is toxic), None)
            if index is None:
                index = next((i for i, t in enumerate(toxics) if t == toxic), None)
            if index is None:
                raise ValueError(f"toxic={toxic!r} is not in force")
            del toxics[index]
            self._toxics = tuple(toxics)

    def clear(self) -> None:
        """Take every toxic out of force; connections then pass bytes untouched."""
        with self._lock:
            self._toxics = ()

    @property
    def connections_accepted(self) -> int:
        return self._accepted

    @property
    def connections_open(self) -> int:
        return self._open

    @property
    def faults_applied(self) -> dict[str, int]:
        """Per kind, how many connections a toxic acted on (a reset sent, a delay added...)."""
        with self._lock:
            return dict(self._faults)

    def reset_counters(self) -> None:
        with self._lock:
            self._faults.clear()
            self._accepted = 0

    def draw(self, probability: float) -> bool:
        """One per-connection draw (loop thread only)."""
        return probability >= 1.0 or self._rng.random() < probability

    def count(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    # -- the loop ----------------------------------------------------------------------

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._on_accept, HOST, 0, backlog=_BACKLOG)

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT / 2)
        await server.wait_closed()

    async def _on_accept(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._accepted += 1
        self._open += 1
        self._transports.add(writer.transport)
        target: asyncio.StreamWriter | None = None
        graceful = True
        try:
            _nodelay(writer)
            link = _Link(self)
            target_reader, target = await asyncio.open_connection(self.host, self.target_port)
            self._transports.add(target.transport)
            _nodelay(target)
            await self._pipe_both(link, reader, writer, target_reader, target)
        except _Cut as cut:
            if cut.reset:
                graceful = False
                await _flushed(writer)
                _reset(writer)
        except (OSError, asyncio.CancelledError):
            graceful = False
        finally:
            for side in (writer, target):
                if side is not None:
                    await _close(side, graceful)
                    self._transports.discard(side.transport)
            self._open -= 1
            self._tasks.discard(task)

    async def _pipe_both(self, link: _Link, client_reader: asyncio.StreamReader,
                         client: asyncio.StreamWriter, target_reader: asyncio.StreamReader,
                         target: asyncio.StreamWriter) -> None:
        pipes = [
            asyncio.ensure_future(self._pipe(link, "upstream", client_reader, target)),
            asyncio.ensure_future(self._pipe(link, "downstream", target_reader, client)),
            asyncio.ensure_future(_time_out(link)),
        ]
        try:
            # The connection ends when both pipes have, or when one of the three raises. The
            # Timeout watcher only ever ends by raising, so FIRST_EXCEPTION (which otherwise
            # waits for all) would hold every connection open.
            pending: set[asyncio.Future[None]] = set(pipes)
            while not (pipes[0].done() and pipes[1].done()):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for pipe in done:
                    error = pipe.exception()
                    if error is not None:
                        raise error
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, link: _Link, direction: str, source: asyncio.StreamReader,
                    sink: asyncio.StreamWriter) -> None:
        # Reads run ahead of the writes (up to _QUEUED_CHUNKS chunks), so a latency delays
        # each chunk from its arrival instead of adding up over a stream.
        queue: asyncio.Queue[tuple[float, bytes | OSError]] = asyncio.Queue(_QUEUED_CHUNKS)
        reader = asyncio.ensure_future(_read_into(source, queue))
        try:
            while True:
                arrived, data = await queue.get()
                if isinstance(data, OSError):
                    raise data
                if not data:
                    break
                await self._forward(link, direction, arrived, data, sink)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await _hold_eof(link, direction)
        for toxic in link.active(direction):
            if isinstance(toxic, SlowClose):
                link.applied(toxic)
                await asyncio.sleep(toxic.delay)
        if sink.can_write_eof():
            with contextlib.suppress(OSError):
                sink.write_eof()

    async def _forward(self, link: _Link, direction: str, arrived: float, data: bytes,
                       sink: asyncio.StreamWriter) -> None:
        toxics = link.active(direction)
        cut: _Cut | None = None
        for toxic in toxics:
            if isinstance(toxic, (Blackhole, Timeout)):
                link.applied(toxic)
                return
        passed = link.passed[direction]
        for toxic in toxics:
            if isinstance(toxic, (ResetPeer, LimitData)):
                limit = toxic.after_bytes if isinstance(toxic, ResetPeer) else toxic.n_bytes
                reset = isinstance(toxic, ResetPeer)
                # A reset fires on the byte after the limit; a limit closes on reaching it.
                if passed + len(data) > limit or (not reset and passed + len(data) == limit):
                    data = data[:max(limit - passed, 0)]
                    link.applied(toxic)
                    cut = _Cut(reset)
                    break
        link.passed[direction] = passed + len(data)
        delay = 0.0
        for toxic in toxics:
            if isinstance(toxic, Latency):
                link.applied(toxic)
                jitter = self._rng.uniform(-toxic.jitter, toxic.jitter) if toxic.jitter else 0.0
                delay += toxic.seconds + jitter
        if delay > 0:
            await asyncio.sleep(max(arrived + delay - asyncio.get_running_loop().time(), 0.0))
        await self._write(link, toxics, data, sink)
        if cut is not None:
            raise cut

    async def _write(self, link: _Link, toxics: list[Toxic], data: bytes,
                     sink: asyncio.StreamWriter) -> None:
        slicer = next((t for t in toxics if isinstance(t, Slicer)), None)
        bandwidth = next((t for t in toxics if isinstance(t, Bandwidth)), None)
        if slicer is None and bandwidth is None:
            if data:
                sink.write(data)
                await sink.drain()
            return
        # Bandwidth is paced in slices of a hundredth of a second's worth of bytes.
        step = max(int(bandwidth.bytes_per_s / 100), 1) if bandwidth is not None else len(data)
        offset = 0
        while offset < len(data):
            size = step
            if slicer is not None:
                link.applied(slicer)
                top = slicer.max_size if slicer.max_size is not None else slicer.size
                size = min(size, self._rng.randint(slicer.size, top))
            piece = data[offset:offset + size]
            offset += len(piece)
            sink.write(piece)
            await sink.drain()
            if bandwidth is not None:
                link.applied(bandwidth)
                await asyncio.sleep(len(piece) / bandwidth.bytes_per_s)
            if slicer is not None and slicer.delay and offset < len(data):
                await asyncio.sleep(slicer.delay)


async def _time_out(link: _Link) -> None:
    """Close the connection (FIN) once a Timeout in force on it has run its time."""
    loop = asyncio.get_running_loop()
    while True:
        link.timeouts_changed.clear()
        due = link.next_timeout()
        if due is not None and due[1] <= loop.time():
            link.applied(due[0])
            raise _Cut(reset=False)
        # Woken by a Timeout newly drawn, or at the due time (a removed one then no longer
        # counts).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if due is None else due[1] - loop.time()):
                await link.timeouts_changed.wait()


async def _hold_eof(link: _Link, direction: str) -> None:
    """Hold an end of stream while a Timeout stops ``direction``: one with ``seconds > 0``
    closes the connection meanwhile, one with 0 holds it until it is removed."""
    while timeouts := [t for t in link.active(direction) if isinstance(t, Timeout)]:
        link.applied(timeouts[0])
        # Toxics change from other threads without a signal to this loop: poll.
        await asyncio.sleep(_HOLD_POLL)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _read_into(source: asyncio.StreamReader,
                     queue: asyncio.Queue[tuple[float, bytes | OSError]]) -> None:
    """Queue each chunk read with its arrival time; then b"" at EOF, or the read's error."""
    loop = asyncio.get_running_loop()
    try:
        while data := await source.read(_READ_SIZE):
            await queue.put((loop.time(), data))
    except OSError as exc:
        await queue.put((loop.time(), exc))
    else:
        await queue.put((loop.time(), b""))


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Wait (a second at most) until the transport has handed its buffer to the kernel."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _FLUSH_TIMEOUT
    # asyncio signals no "buffer empty" event, only drain()'s low-water mark: poll.
    while writer.transport.get_write_buffer_size() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def _close(writer: asyncio.StreamWriter, graceful: bool) -> None:
    """A FIN after the buffered bytes (``graceful``), else drop the connection at once."""
    if graceful and not writer.transport.is_closing():
        await _flushed(writer)
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    writer.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: linger on, timeout 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
