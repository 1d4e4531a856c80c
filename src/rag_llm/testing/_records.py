"""Recorded requests and the connection/request counters shared across threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server read in full.

    ``headers`` has lower-case names (a repeated header keeps its last value),
    ``query`` maps each query parameter to its last value, and ``json`` is the
    parsed body, or ``None`` when the body is empty or not valid JSON.
    ``connection_id`` starts at 1 and never repeats within a server's life;
    ``nth_on_connection`` is 1 for the first request on a connection. ``received_at`` is
    ``time.monotonic()`` when the request had been read.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    connection_id: int
    nth_on_connection: int
    body: bytes = field(default=b"", repr=False)
    received_at: float = field(default_factory=time.monotonic, repr=False)


class Stats:
    """Counters updated by the event loop and read by the test thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_connection_id = 1
        self.connections_accepted = 0
        self.connections_open = 0
        self.max_concurrent_connections = 0
        self.connections_closed_by_client = 0
        self.connections_closed_by_server = 0
        self.requests_served = 0
        self._requests: list[RecordedRequest] = []

    def read(self, name: str) -> int:
        with self._lock:
            value: int = getattr(self, name)
            return value

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def connection_opened(self) -> int:
        """Count a newly accepted connection and return its id."""
        with self._lock:
            connection_id = self._next_connection_id
            self._next_connection_id += 1
            self.connections_accepted += 1
            self.connections_open += 1
            self.max_concurrent_connections = max(
                self.max_concurrent_connections, self.connections_open
            )
            return connection_id

    def connection_closed(self, *, by_client: bool) -> None:
        with self._lock:
            self.connections_open -= 1
            if by_client:
                self.connections_closed_by_client += 1
            else:
                self.connections_closed_by_server += 1

    def request_received(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def response_completed(self) -> None:
        with self._lock:
            self.requests_served += 1

    def reset(self) -> None:
        """Zero the counters and forget recorded requests.

        Connections that are open stay counted in ``connections_open`` (and so
        in the new high-water mark) because they will still be closed later.
        """
        with self._lock:
            self.connections_accepted = 0
            self.max_concurrent_connections = self.connections_open
            self.connections_closed_by_client = 0
            self.connections_closed_by_server = 0
            self.requests_served = 0
            self._requests.clear()
