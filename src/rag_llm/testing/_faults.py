"""Fault descriptions and the thread-safe queue that hands them to connections."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

FaultAction = Literal["respond", "close", "reset", "blackhole", "truncate_stream"]
"""What the server does with a request a fault matched.

- ``respond``: answer with the fault's status, body and headers: ``content`` as given, or
  ``events`` streamed one by one, or else ``body`` as JSON.
- ``close``: close the connection without sending a response byte.
- ``reset``: abort the connection with a TCP RST (``SO_LINGER`` 0), no response.
- ``blackhole``: never answer; the connection stays open until the client
  closes it or the server stops.
- ``truncate_stream``: send the headers and the first SSE event of a streamed
  reply (or half the body of a plain one), then close the connection.
"""

_ACTIONS: frozenset[str] = frozenset(get_args(FaultAction))


@dataclass(frozen=True)
class Fault:
    """A misbehaviour applied to the next ``times`` requests that match it.

    ``path`` is a substring matched against the request path (``None`` matches
    any path). With ``only_reused`` the fault skips the first request on each
    connection, which models a server closing a keep-alive connection just as
    the client reuses it. ``delay`` is added to the server-wide delay.

    For an upstream that answers garbage, ``content`` is sent as the body byte for byte
    (with a ``content-length``), and ``events`` are sent one by one in a chunked body, each
    as given (SSE framing included, or not); neither gets a content type unless
    ``headers`` names one. ``body`` is ignored when either is set.
    """

    status: int = 500
    times: int = 1
    path: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: FaultAction = "respond"
    only_reused: bool = False
    content: bytes | None = field(default=None, repr=False)
    events: tuple[bytes, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            expected = ", ".join(sorted(_ACTIONS))
            raise ValueError(f"unknown fault action {self.action!r}; expected one of {expected}")
        if self.times < 1:
            raise ValueError("Fault.times must be at least 1")
        if self.delay < 0:
            raise ValueError("Fault.delay must not be negative")
        if self.content is not None and self.events is not None:
            raise ValueError("Fault takes content or events, not both")
        if not 200 <= self.status <= 599:
            raise ValueError("Fault.status must be a final HTTP status code (200-599)")

    def matches(self, path: str, nth_on_connection: int) -> bool:
        """Whether this fault applies to a request for ``path``."""
        if self.only_reused and nth_on_connection <= 1:
            return False
        return self.path is None or self.path in path


class FaultQueue:
    """Faults waiting to be applied, in the order they were added.

    Written from the test thread and consumed by the server's event loop, so
    every access holds a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[tuple[Fault, int]] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append((fault, fault.times))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    @property
    def pending(self) -> int:
        """How many more requests the queued faults will still affect."""
        with self._lock:
            return sum(remaining for _, remaining in self._armed)

    def take(self, path: str, nth_on_connection: int) -> Fault | None:
        """Return the first fault matching the request and use up one of its shots."""
        with self._lock:
            for index, (fault, remaining) in enumerate(self._armed):
                if fault.matches(path, nth_on_connection):
                    if remaining > 1:
                        self._armed[index] = (fault, remaining - 1)
                    else:
                        del self._armed[index]
                    return fault
            return None
