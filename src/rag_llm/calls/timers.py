"""The stream timers of async and sync calls, one interface for both.

An async wait for a token can be cut short (``asyncio.timeout``); a sync one cannot, and
its read timeout bounds each wait instead, so the sync timer never fires.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

__all__ = ["AsyncTimer", "Timer"]

AsyncTimer: Final = asyncio.timeout


class Timer:
    """The sync stand-in for :data:`AsyncTimer`: a context that never expires."""

    __slots__ = ()

    def __init__(self, seconds: float | None) -> None:
        del seconds  # the socket's read timeout bounds a sync wait

    def __enter__(self) -> Timer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def expired(self) -> bool:
        return False
