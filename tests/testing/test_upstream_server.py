"""UpstreamServer, exercised only with the standard library's sockets, http.client and ssl."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rag_llm.testing import Fault, RecordedRequest, UpstreamServer

JSON = {"content-type": "application/json"}


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer() as upstream:
        yield upstream


@contextlib.contextmanager
def connect(server: UpstreamServer, timeout: float = 5.0) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()


def call(
    conn: http.client.HTTPConnection,
    path: str,
    payload: Any = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, Any]:
    body = None if payload is None else json.dumps(payload)
    conn.request(method, path, body, {**JSON, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    return response.status, response.headers, json.loads(data) if data else None


def raw_request(path: str, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def sse_events(body: bytes) -> list[str]:
    assert body.endswith(b"\n\n")
    events = body.decode().split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello big world"}]}


def test_keep_alive_requests_share_one_connection(server: UpstreamServer) -> None:
    with connect(server) as conn:
        assert call(conn, "/v1/models", method="GET")[0] == 200
        assert call(conn, "/v1/models", method="GET")[0] == 200
    assert server.connections_accepted == 1
    assert [(r.connection_id, r.nth_on_connection) for r in server.requests] == [(1, 1), (1, 2)]
    assert server.requests_served == 2
    assert server.wait_until(lambda s: s.connections_open == 0)
    assert server.connections_closed_by_client == 1
    assert server.connections_closed_by_server == 0


def test_separate_connections_are_counted(server: UpstreamServer) -> None:
    with connect(server) as first, connect(server) as second:
        call(first, "/v1/models", method="GET")
        call(second, "/v1/models", method="GET")
        assert server.connections_accepted == 2
        assert server.connections_open == 2
        assert server.max_concurrent_connections == 2
    assert server.wait_until(lambda s: s.connections_closed_by_client == 2)
    assert server.connections_open == 0
    assert server.max_concurrent_connections == 2


def test_https_with_generated_ca() -> None:
    with UpstreamServer(tls=True) as server:
        assert server.base_url == f"https://127.0.0.1:{server.port}/v1"
        assert server.ca_cert_path is not None
        for context in (
            ssl.create_default_context(cafile=server.ca_cert_path),
            server.ssl_context(),
        ):
            conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
            with contextlib.closing(conn):
                status, _, body = call(conn, "/v1/embeddings", {"model": "m", "input": "x"})
                assert status == 200
                assert body["data"][0]["embedding"] == server.expected_embedding("x")
                assert call(conn, "/v1/models", method="GET")[0] == 200
        assert server.connections_accepted == 2
        untrusting = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5)
        with contextlib.closing(untrusting), pytest.raises(ssl.SSLCertVerificationError):
            untrusting.request("GET", "/v1/models")
    assert server.ca_cert_path is None


def test_plain_server_has_no_tls_material(server: UpstreamServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.origin == f"http://127.0.0.1:{server.port}"
    assert server.ca_cert_path is None
    with pytest.raises(RuntimeError):
        server.ssl_context()


def test_embeddings_are_deterministic_unit_vectors(server: UpstreamServer) -> None:
    with connect(server) as conn:
        status, _, body = call(conn, "/v1/embeddings", {"model": "emb", "input": ["a b", "c"]})
        assert status == 200
        assert body["object"] == "list"
        assert body["model"] == "emb"
        assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        assert [d["index"] for d in body["data"]] == [0, 1]
        vectors = [d["embedding"] for d in body["data"]]
        assert vectors == [server.expected_embedding("a b"), server.expected_embedding("c")]
        assert all(len(v) == server.embedding_dim == 8 for v in vectors)
        assert all(math.isclose(math.hypot(*v), 1.0) for v in vectors)
        assert vectors[0] != vectors[1]

        again = call(conn, "/v1/embeddings", {"model": "emb", "input": "c"})[2]
        assert again["data"][0]["embedding"] == vectors[1]

        sized = call(conn, "/v1/embeddings", {"model": "emb", "input": "c", "dimensions": 32})[2]
        assert sized["data"][0]["embedding"] == server.expected_embedding("c", 32)

        server.embedding_dim = 4
        assert len(call(conn, "/v1/embeddings", {"input": "c"})[2]["data"][0]["embedding"]) == 4

        packed = call(conn, "/v1/embeddings", {"input": "c", "encoding_format": "base64"})[2]
        decoded = struct.unpack("<4f", base64.b64decode(packed["data"][0]["embedding"]))
        assert decoded == pytest.approx(server.expected_embedding("c"), abs=1e-6)

        assert call(conn, "/v1/embeddings", {"input": [1, 2]})[0] == 400
        assert call(conn, "/v1/embeddings", {"input": "c", "dimensions": 0})[0] == 400


def test_chat_completion_echoes_last_user_message(server: UpstreamServer) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    with connect(server) as conn:
        status, headers, body = call(
            conn, "/v1/chat/completions", {"model": "g", "messages": messages}
        )
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body["object"] == "chat.completion"
    assert body["model"] == "g"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: second question",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3


def test_streamed_chat_is_sse_with_done(server: UpstreamServer) -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with connect(server) as conn:
        conn.request("POST", "/v1/chat/completions", json.dumps(payload), JSON)
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        events = sse_events(response.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content_chunks = [c for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert len(content_chunks) == 4
    assert content_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"]["content"] for c in content_chunks)
    assert text == "echo: hello big world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert server.requests_served == 1


def test_azure_paths_require_api_version(server: UpstreamServer) -> None:
    base = "/openai/deployments/my-embed"
    with connect(server) as conn:
        status, _, body = call(conn, f"{base}/embeddings?api-version=2024-10-21", {"input": "x"})
        assert status == 200
        assert body["model"] == "my-embed"
        assert body["data"][0]["embedding"] == server.expected_embedding("x")
        status, _, body = call(conn, "/openai/deployments/gpt/chat/completions?api-version=1", CHAT)
        assert status == 200
        assert body["choices"][0]["message"]["content"] == "echo: hello big world"
        status, _, body = call(conn, f"{base}/embeddings", {"input": "x"})
        assert status == 400
        assert "api-version" in body["error"]["message"]
    assert server.requests[0].query == {"api-version": "2024-10-21"}


def test_api_key_is_enforced() -> None:
    with UpstreamServer(api_key="sk-test") as server, connect(server) as conn:
        status, _, body = call(conn, "/v1/models", method="GET")
        assert status == 401
        assert body["error"]["code"] == "invalid_api_key"
        bad = {"authorization": "Bearer nope"}
        assert call(conn, "/v1/models", method="GET", headers=bad)[0] == 401
        good = {"authorization": "Bearer sk-test"}
        assert call(conn, "/v1/models", method="GET", headers=good)[0] == 200
        assert call(conn, "/v1/models", method="GET", headers={"api-key": "sk-test"})[0] == 200


def test_errors_for_unknown_path_bad_json_and_method(server: UpstreamServer) -> None:
    with connect(server) as conn:
        status, _, body = call(conn, "/v1/nope", {})
        assert status == 404
        assert set(body["error"]) == {"message", "type", "param", "code"}
        conn.request("POST", "/v1/embeddings", b"{not json", JSON)
        response = conn.getresponse()
        assert response.status == 400
        assert "error" in json.loads(response.read())
        status, headers, _ = call(conn, "/v1/models", {})
        assert status == 405
        assert headers["allow"] == "GET"
        assert call(conn, "/v1/models", method="GET")[0] == 200
    assert server.connections_accepted == 1


def test_malformed_request_gets_400_and_close(server: UpstreamServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 400")
    assert server.connections_closed_by_server == 1


def test_requests_are_recorded_and_reset(server: UpstreamServer) -> None:
    with connect(server) as conn:
        call(conn, "/v1/embeddings?x=1", {"input": "q"}, headers={"X-Trace": "abc"})
    [request] = server.requests
    assert isinstance(request, RecordedRequest)
    assert (request.method, request.path, request.query) == ("POST", "/v1/embeddings", {"x": "1"})
    assert request.headers["x-trace"] == "abc"
    assert request.json == {"input": "q"}
    server.wait_until(lambda s: s.connections_open == 0)
    server.reset()
    assert server.requests == []
    assert server.requests_served == server.connections_accepted == 0
    assert server.connections_closed_by_client == server.max_concurrent_connections == 0


def test_fault_responds_with_status_and_headers(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=429, times=2, path="embeddings", headers={"Retry-After": "1"}))
    assert server.pending_faults == 2
    with connect(server) as conn:
        assert call(conn, "/v1/models", method="GET")[0] == 200
        for _ in range(2):
            status, headers, body = call(conn, "/v1/embeddings", {"input": "x"})
            assert status == 429
            assert headers["retry-after"] == "1"
            assert body["error"]["code"] == "rate_limit_exceeded"
        assert call(conn, "/v1/embeddings", {"input": "x"})[0] == 200
        server.add_fault(Fault(status=503, body={"error": {"message": "busy"}}))
        assert call(conn, "/v1/models", method="GET")[2] == {"error": {"message": "busy"}}
    assert server.connections_accepted == 1
    assert server.pending_faults == 0


def test_fault_sends_raw_content_and_raw_events_byte_for_byte(server: UpstreamServer) -> None:
    garbage = b'{"data": [\xff\xfe'
    server.add_fault(Fault(status=200, content=garbage, headers={"content-type": "text/html"}))
    server.add_fault(Fault(status=200, events=(b"data: {no\n", b"\xff\n\n")))
    with connect(server) as conn:
        conn.request("POST", "/v1/embeddings", b"{}", JSON)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, garbage)
        assert response.headers["content-type"] == "text/html"
        assert response.headers["content-length"] == str(len(garbage))
        conn.request("POST", "/v1/chat/completions", b"{}", JSON)
        response = conn.getresponse()
        assert response.read() == b"data: {no\n\xff\n\n"
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-type" not in response.headers
    assert server.pending_faults == 0


def test_fault_close_drops_connection_without_response(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="close"))
    with connect(server) as conn, pytest.raises(http.client.RemoteDisconnected):
        call(conn, "/v1/models", method="GET")
    assert server.wait_until(lambda s: s.connections_closed_by_server == 1)
    assert server.requests_served == 0
    assert len(server.requests) == 1


def test_fault_reset_sends_rst(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="reset"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_request("/v1/embeddings", {"input": "x"}))
        with pytest.raises(ConnectionResetError):
            read_until_eof(sock)
    assert server.connections_closed_by_server == 1


def test_fault_blackhole_never_answers(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="blackhole", times=2))
    with connect(server, timeout=0.2) as conn, pytest.raises(TimeoutError):
        call(conn, "/v1/models", method="GET")
    assert server.wait_until(lambda s: s.connections_closed_by_client == 1)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with sock:
        sock.sendall(raw_request("/v1/embeddings", {"input": "x"}))
        assert server.wait_until(lambda s: len(s.requests) == 2)
        server.stop()
        assert read_until_eof(sock) == b""
    assert server.connections_open == 0
    assert server.connections_closed_by_server == 1


def test_fault_only_reused_hits_second_request_on_a_connection(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="close", only_reused=True))
    with connect(server) as conn:
        assert call(conn, "/v1/models", method="GET")[0] == 200
        with pytest.raises(http.client.RemoteDisconnected):
            call(conn, "/v1/models", method="GET")
    with connect(server) as conn:
        assert call(conn, "/v1/models", method="GET")[0] == 200
    assert server.connections_accepted == 2
    assert server.pending_faults == 0


def test_fault_truncate_stream_sends_one_event_then_closes(server: UpstreamServer) -> None:
    server.add_fault(Fault(action="truncate_stream"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_request("/v1/chat/completions", {**CHAT, "stream": True}))
        data = read_until_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.count(b"data: ") == 1
    assert b'"content":"echo: "' in body
    assert b"[DONE]" not in body
    assert not body.endswith(b"0\r\n\r\n")
    assert server.connections_closed_by_server == 1
    assert server.requests_served == 0


def test_delays(server: UpstreamServer) -> None:
    with connect(server) as conn:
        server.delay = 0.15
        started = time.monotonic()
        call(conn, "/v1/models", method="GET")
        assert time.monotonic() - started >= 0.15
        server.delay = 0.0
        server.add_fault(Fault(status=200, delay=0.15, body={"ok": True}))
        started = time.monotonic()
        assert call(conn, "/v1/models", method="GET")[2] == {"ok": True}
        assert time.monotonic() - started >= 0.15


def test_idle_timeout_closes_keep_alive_connection(server: UpstreamServer) -> None:
    server.idle_timeout = 0.1
    server.keep_alive_header = 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_request("/v1/embeddings", {"input": "x"}))
        started = time.monotonic()
        data = read_until_eof(sock)
        assert time.monotonic() - started >= 0.09
    assert data.startswith(b"HTTP/1.1 200")
    assert b"keep-alive: timeout=5" in data.lower()
    assert server.connections_closed_by_server == 1
    assert server.connections_closed_by_client == 0


def test_client_connection_close_header_is_honoured(server: UpstreamServer) -> None:
    with connect(server) as conn:
        status, headers, _ = call(conn, "/v1/models", method="GET", headers={"connection": "close"})
        assert status == 200
        assert headers["connection"] == "close"
        assert server.connections_closed_by_server == 1
        assert call(conn, "/v1/models", method="GET")[0] == 200  # http.client reconnects
    assert server.connections_accepted == 2


def test_stop_closes_every_connection() -> None:
    server = UpstreamServer().start()
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    try:
        sockets[0].sendall(raw_request("/v1/embeddings", {"input": "x"}))
        sockets[1].sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{")
        assert server.wait_until(lambda s: s.connections_accepted == 3 and s.requests_served == 1)
        server.stop()
        server.stop()
        assert server.connections_open == 0
        assert server.connections_closed_by_server == 3
        assert not [t for t in threading.enumerate() if t.name == "UpstreamServer"]
        for sock in sockets:
            read_until_eof(sock)
    finally:
        for sock in sockets:
            sock.close()


def test_many_concurrent_connections(server: UpstreamServer) -> None:
    request = raw_request("/v1/embeddings", {"input": "load"})
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(300)]
    try:
        for sock in sockets:
            sock.sendall(request)
        for sock in sockets:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert server.connections_accepted == server.max_concurrent_connections == 300
    finally:
        for sock in sockets:
            sock.close()
    assert server.wait_until(lambda s: s.connections_closed_by_client == 300)


def test_pooled_load_reuses_connections(server: UpstreamServer) -> None:
    local = threading.local()
    connections: list[http.client.HTTPConnection] = []

    def one(i: int) -> int:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connections.append(local.conn)
        return call(local.conn, "/v1/embeddings", {"input": f"text {i}"})[0]

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(one, range(400)))
    finally:
        for conn in connections:
            conn.close()
    assert statuses == [200] * 400
    assert server.requests_served == 400
    assert server.connections_accepted == len(connections) <= 20


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="action"):
        Fault(action="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        Fault(times=0)
    with pytest.raises(ValueError, match="content or events"):
        Fault(content=b"", events=())
