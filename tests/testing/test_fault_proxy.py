"""FaultProxy's toxics, each measured at a real socket in front of a real echo server."""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from rag_llm import create_provider
from rag_llm.testing import (
    Bandwidth,
    Blackhole,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    SlowClose,
    Timeout,
    UpstreamServer,
)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _EchoServer)
        while chunk := self.request.recv(65536):
            server.received += len(chunk)
            self.request.sendall(chunk)


class _EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; counts the bytes that reached it; closes on the client's FIN."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    received = 0


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.server_address[1], seed=7) as fault_proxy:
        yield fault_proxy


def _connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(proxy: FaultProxy, payload: bytes) -> tuple[bytes, float, int]:
    """Send ``payload``, half-close, read to EOF: (bytes back, seconds, recv() calls)."""
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - started, len(chunks)


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def test_passes_bytes_untouched_and_counts_connections(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 400
    for _ in range(3):
        assert _exchange(proxy, payload)[0] == payload
    assert proxy.connections_accepted == 3
    assert _wait_for(lambda: proxy.connections_open == 0, 2.0)  # each ended with its FINs
    assert proxy.faults_applied == {}
    assert proxy.base_url == f"http://127.0.0.1:{proxy.port}/v1"
    assert proxy.url("https") == f"https://127.0.0.1:{proxy.port}"


def test_latency_delays_each_direction_it_names(proxy: FaultProxy) -> None:
    _, baseline, _ = _exchange(proxy, b"ping")
    proxy.add(Latency(0.15, jitter=0.02, direction="downstream"))
    back, took, _ = _exchange(proxy, b"ping")
    assert back == b"ping"
    assert took >= 0.13
    assert took < 0.15 + 0.02 + baseline + 0.5
    proxy.clear()
    proxy.add(Latency(0.1, direction="upstream"))
    proxy.add(Latency(0.1, direction="downstream"))
    assert _exchange(proxy, b"ping")[1] >= 0.2
    assert proxy.faults_applied == {"latency": 3}


def test_latency_delays_each_chunk_from_its_arrival(proxy: FaultProxy) -> None:
    proxy.add(Latency(0.2))
    arrivals: list[float] = []
    with _connect(proxy) as sock:

        def read_back() -> None:
            got = 0
            while got < 10 and (chunk := sock.recv(100)):
                got += len(chunk)
                arrivals.extend([time.monotonic()] * len(chunk))

        reader = threading.Thread(target=read_back)
        reader.start()
        sent = []
        for _ in range(10):
            sent.append(time.monotonic())
            sock.sendall(b"t")
            time.sleep(0.04)
        reader.join(5)
    # Each byte comes back 0.2 s after it was sent: chunks queued behind a delayed one are
    # not delayed again (which would take the second byte's delay to about 0.36 s).
    delays = [back - out for out, back in zip(sent, arrivals, strict=True)]
    assert min(delays) >= 0.19
    assert max(delays) < 0.28, delays


def test_bandwidth_bounds_the_throughput(proxy: FaultProxy) -> None:
    proxy.add(Bandwidth(200_000))
    payload = b"x" * 60_000
    back, took, _ = _exchange(proxy, payload)
    assert back == payload
    assert took >= 0.28  # 60 kB at 200 kB/s: 0.3 s
    assert took < 2.0


def test_reset_peer_sends_an_rst(proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.add(ResetPeer())
    with _connect(proxy) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert echo.received == 0  # upstream: the request never reached the target
    assert proxy.faults_applied == {"reset_peer": 1}


def test_reset_peer_after_bytes_passes_that_many_first(proxy: FaultProxy) -> None:
    proxy.add(ResetPeer(after_bytes=10, direction="downstream"))
    with _connect(proxy) as sock:
        sock.sendall(b"0123456789abcdef")
        got = b""
        with pytest.raises(ConnectionResetError):  # noqa: PT012 - the RST ends the reads
            while chunk := sock.recv(100):
                got += chunk
    assert got == b"0123456789"


def test_blackhole_accepts_and_never_answers(proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.add(Blackhole())
    with _connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"anyone there?")
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert echo.received == 0
    proxy.clear()
    assert _exchange(proxy, b"back again")[0] == b"back again"


def test_slow_close_holds_the_fin(proxy: FaultProxy) -> None:
    proxy.add(SlowClose(0.25))
    back, took, _ = _exchange(proxy, b"bye")
    assert back == b"bye"
    assert took >= 0.24
    assert _wait_for(lambda: proxy.connections_open == 0, 2.0)
    assert proxy.faults_applied == {"slow_close": 1}


def test_slicer_writes_tiny_segments(proxy: FaultProxy) -> None:
    payload = b"abcdefghijklmnopqrstuvwxyz0123"
    proxy.add(Slicer(size=2, max_size=3, delay=0.01))
    back, took, recvs = _exchange(proxy, payload)
    assert back == payload
    assert recvs >= len(payload) // 3 // 2  # segments 0.01 s apart arrive mostly apart
    assert took >= 0.01 * (len(payload) // 3 - 1)


def test_limit_data_closes_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.add(LimitData(1000))
    back, _, _ = _exchange(proxy, b"y" * 5000)
    assert back == b"y" * 1000  # then a clean EOF, not an RST
    assert proxy.faults_applied == {"limit_data": 1}


def test_timeout_stops_the_answer_then_closes_with_a_fin(
    proxy: FaultProxy, echo: _EchoServer,
) -> None:
    proxy.add(Timeout(0.2))
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(100) == b""  # an end of stream, not an RST, and nothing before it
        took = time.monotonic() - started
    assert echo.received == 4  # downstream: the request passed, its answer was dropped
    assert 0.19 <= took < 0.2 + 0.3, took
    assert _wait_for(lambda: proxy.connections_open == 0)
    assert proxy.faults_applied == {"timeout": 1}


def test_timeout_upstream_keeps_the_request_from_the_target(
    proxy: FaultProxy, echo: _EchoServer,
) -> None:
    proxy.add(Timeout(0.15, direction="upstream"))
    _, took, _ = _exchange(proxy, b"never arrives")
    assert echo.received == 0
    assert 0.14 <= took < 0.15 + 0.3, took


def test_timeout_counts_from_the_next_chunk_when_added_later(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"one")
        assert sock.recv(10) == b"one"
        time.sleep(0.2)  # counted from accept, the toxic below would close at once
        proxy.add(Timeout(0.15))
        started = time.monotonic()
        sock.sendall(b"two")
        assert sock.recv(10) == b""
        took = time.monotonic() - started
    assert 0.14 <= took < 0.15 + 0.3, took


def test_timeout_zero_drops_the_data_until_removed(
    proxy: FaultProxy, echo: _EchoServer,
) -> None:
    toxic = proxy.add(Timeout(0))
    with _connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"one")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert echo.received == 3  # echoed, and dropped on its way back
        proxy.remove(toxic)
        sock.sendall(b"two")
        assert sock.recv(10) == b"two"
    assert proxy.faults_applied == {"timeout": 1}


def test_timeout_zero_holds_the_end_of_stream_until_removed(proxy: FaultProxy) -> None:
    proxy.add(Timeout(0))
    with _connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)  # the echo server closes its side in reply
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert proxy.connections_open == 1
        proxy.clear()
        sock.settimeout(2)
        assert sock.recv(10) == b""  # the held FIN now passes; the dropped echo does not


def _reset_pattern(target_port: int, seed: int, n: int) -> tuple[list[bool], dict[str, int]]:
    pattern = []
    with FaultProxy(target_port, seed=seed) as fault_proxy:
        fault_proxy.add(ResetPeer(probability=0.3))
        for _ in range(n):
            with _connect(fault_proxy) as sock:
                sock.sendall(b"?")
                try:
                    pattern.append(sock.recv(10) != b"?")
                except ConnectionResetError:
                    pattern.append(True)
        return pattern, fault_proxy.faults_applied


def test_probability_is_drawn_per_connection_reproducibly(echo: _EchoServer) -> None:
    first, applied = _reset_pattern(echo.server_address[1], seed=3, n=200)
    again, _ = _reset_pattern(echo.server_address[1], seed=3, n=200)
    assert first == again
    assert 40 <= sum(first) <= 80  # 0.3 of 200 connections, within about 3 sigma
    assert applied == {"reset_peer": sum(first)}


def test_a_toxic_added_later_applies_to_open_connections(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"one")
        assert sock.recv(10) == b"one"
        toxic = proxy.add(ResetPeer(direction="downstream"))
        sock.sendall(b"two")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    proxy.remove(toxic)
    assert proxy.toxics == ()
    assert _exchange(proxy, b"three")[0] == b"three"


def test_remove_takes_an_equal_toxic_and_refuses_an_absent_one(proxy: FaultProxy) -> None:
    proxy.add(Latency(0.01))
    proxy.add(Slicer(size=4))
    proxy.remove(Latency(0.01))
    assert proxy.toxics == (Slicer(size=4),)
    with pytest.raises(ValueError, match="not in force"):
        proxy.remove(Latency(0.01))
    with pytest.raises(TypeError, match="must be a Toxic"):
        proxy.add("latency")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: Latency(-1), "seconds=-1"),
        (lambda: Latency(0.1, jitter=float("nan")), "jitter=nan"),
        (lambda: Bandwidth(0), "bytes_per_s=0"),
        (lambda: ResetPeer(probability=1.5), "probability=1.5"),
        (lambda: ResetPeer(after_bytes=-3), "after_bytes=-3"),
        (lambda: Blackhole(direction="sideways"), "direction='sideways'"),
        (lambda: Slicer(size=0), "size=0"),
        (lambda: Slicer(size=4, max_size=2), "max_size=2"),
        (lambda: LimitData(1.5), "n_bytes=1.5"),  # type: ignore[arg-type]
        (lambda: SlowClose("1"), "delay='1'"),  # type: ignore[arg-type]
        (lambda: Timeout(-0.1), "seconds=-0.1"),
        (lambda: FaultProxy(0), "target_port=0"),
    ],
)
def test_bad_settings_name_the_field_and_value(make: object, text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(text)):
        make()  # type: ignore[operator]


def test_stop_drops_open_connections_cleanly(upstream: UpstreamServer) -> None:
    proxy = FaultProxy(upstream.port)
    with proxy:
        proxy.add(Blackhole())
        held = [_connect(proxy) for _ in range(5)]
        for sock in held:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while proxy.connections_open < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.connections_open == 5
    assert "not started" in repr(proxy)
    for sock in held:
        sock.settimeout(5)
        assert sock.recv(10) == b""  # the proxy closed it; nothing was answered
        sock.close()
    assert upstream.requests == []


def test_tls_passes_through_tiny_segments(tls_upstream: UpstreamServer) -> None:
    with FaultProxy(tls_upstream.port, seed=1) as proxy:
        proxy.add(Slicer(size=1, max_size=7, direction="downstream"))
        proxy.add(Slicer(size=1, max_size=7, direction="upstream"))
        settings = {"type": "openai", "model": "m", "api_key": "k", "verify":
                    tls_upstream.ca_cert_path, "base_url": proxy.url("https", "/v1")}
        with create_provider("embedding", settings) as embedder:
            assert embedder.embed(["sliced"]) == [tls_upstream.expected_embedding("sliced")]
        assert proxy.faults_applied["slicer"] == 2 * proxy.connections_accepted  # one per way
