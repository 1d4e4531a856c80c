"""glibc's allocator, asked to give back what an in-process model's batches free.

A batch of embeddings allocates and frees a few hundred MiB of activations, and glibc keeps
what is freed for reuse. :func:`trim` (``malloc_trim``) returns the free pages of every
arena, but the top of a worker thread's arena only shrinks on glibc's own terms, and keeps
up to 64 MiB. So the service (``rag-llm serve`` and its workers) calls :func:`one_arena`
first: every thread then allocates from the main arena, which :func:`trim` returns whole.
Where the C library is not glibc (musl, macOS, Windows) both do nothing.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Final

__all__ = ["one_arena", "trim"]

_M_ARENA_MAX: Final = -8  # glibc's malloc.h


@functools.cache
def _glibc() -> Any:
    """The process's C library where it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def trim() -> None:
    """Give the allocator's free memory back to the system (0.3 ms when little is free)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def one_arena() -> bool:
    """Have the threads created from now on share the arenas already made (at a process's
    start, only the main one) instead of one each; True if done.

    A ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` in the environment is the user's choice and
    is left as it is. Small allocations still come from each thread's own cache, without
    the arena's lock.
    """
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, 1))
