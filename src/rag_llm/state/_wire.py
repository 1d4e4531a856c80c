"""Admission's hot path: ``EVALSHA`` of the ``ADMIT`` script on connections of its own.

Through redis-py's client one async ``EVALSHA`` cost about 410 µs of CPU here (packing and
encoding each argument, the pool's condition, the retry wrapper, a timeout context around
each read). Sent pre-packed on a connection held for the trip, with redis-py's public
``Connection`` API, the same trip costs about 200 µs, and every call admitted to an
endpoint pays a share of one. The connections have no socket timeout: the state timeout
bounds each trip as a whole (``StateBackend._arun``), and a trip that fails or is cancelled
drops its connection, whose state is then unknown.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio.connection import AbstractConnection

__all__ = ["ScriptWires"]


def _packed(parts: Sequence[str]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ScriptWires:
    """Connections of one event loop that run one script; a trip holds one, and up to
    ``keep`` idle ones are kept for the next trips."""

    def __init__(self, pool: redis.asyncio.BlockingConnectionPool, script: str,
                 keep: int) -> None:
        # The pool only says how to connect (URL, TLS, password, db): no connection of its
        # own is ever taken from it.
        self._class: Any = pool.connection_class
        self._options = {**pool.connection_kwargs, "socket_timeout": None}
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's name
        self._keep = keep
        self._idle: list[AbstractConnection] = []

    async def run(self, keys: Sequence[str], args: Sequence[str]) -> Any:
        """The script's reply for ``keys`` and ``args``, loading it first where Redis
        does not know it (a new or flushed server)."""
        from redis.exceptions import NoScriptError

        connection = self._idle.pop() if self._idle else self._class(**self._options)
        command = _packed(("EVALSHA", self._sha, str(len(keys)), *keys, *args))
        try:
            await connection.send_packed_command(command, check_health=False)
            try:
                reply = await connection.read_response()
            except NoScriptError:
                await connection.send_packed_command(
                    _packed(("SCRIPT", "LOAD", self._script)), check_health=False)
                await connection.read_response()
                await connection.send_packed_command(command, check_health=False)
                reply = await connection.read_response()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if len(self._idle) < self._keep:
            self._idle.append(connection)
        else:
            await connection.disconnect()
        return reply

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()
