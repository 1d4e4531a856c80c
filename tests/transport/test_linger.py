"""A closed connection's budget comes back only once the server has closed its side too."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from rag_llm.transport._linger import LINGER, close_then, finish_now, hold_socket


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        yield client, server


def test_the_budget_comes_back_after_the_server_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    done = threading.Event()
    held = hold_socket(client)
    assert held is not None
    client.close()  # the stream's own close: the held socket keeps it open
    close_then(held, done.set, owner=pair)
    server.settimeout(5)
    assert server.recv(10) == b""  # the client half-closed at once
    assert not done.wait(0.1)  # the server has not closed yet
    server.close()
    assert done.wait(5)


def test_a_server_that_never_closes_holds_the_budget_for_linger_at_most(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _server = pair
    done = threading.Event()
    held = hold_socket(client)
    assert held is not None
    started = time.monotonic()
    close_then(held, done.set, owner=pair)
    assert done.wait(LINGER + 5)
    assert time.monotonic() - started >= LINGER * 0.9


def test_only_tcp_sockets_are_held() -> None:
    assert hold_socket(None) is None
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert hold_socket(left) is None


def test_a_closing_pool_finishes_its_sockets_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _server = pair  # a server that never closes
    done = threading.Event()
    held = hold_socket(client)
    assert held is not None
    close_then(held, done.set, owner=pair)
    started = time.monotonic()
    assert finish_now(pair)
    assert done.is_set()
    assert time.monotonic() - started < LINGER / 2
    assert held.fileno() == -1  # closed, not left to the closing thread
