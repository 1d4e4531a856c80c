"""glibc's allocator: the service's threads share one arena, whose free memory trim returns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rag_llm import _malloc

pytestmark = pytest.mark.skipif(_malloc._glibc() is None, reason="the C library is not glibc")

# Four threads allocate (4,000 bytes: past the per-thread cache, so from an arena), then
# malloc_stats() writes a line per arena to stderr.
_PROBE = """
import ctypes, sys, threading
from rag_llm import _malloc

print(_malloc.one_arena() if sys.argv[1] == "one" else None)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
threads = [threading.Thread(target=libc.malloc, args=(4000,)) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    clean = {name: value for name, value in os.environ.items()
             if name not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                          timeout=60, check=True, env={**clean, **env})
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return done.stdout.strip(), arenas


def test_one_arena_makes_new_threads_share_the_main_one() -> None:
    assert _arenas("one") == ("True", 1)
    assert _arenas("default")[1] > 1  # each thread its own, as glibc does by default


def test_an_arena_limit_in_the_environment_is_left_to_the_user() -> None:
    said, arenas = _arenas("one", MALLOC_ARENA_MAX="2")
    assert said == "False"
    assert arenas == 2


def test_trim_gives_free_memory_back() -> None:
    probe = """
import ctypes
from rag_llm import _malloc

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(64 * 1024) for _ in range(3200)]  # 200 MiB below mmap's threshold
for block in blocks:
    ctypes.memset(block, 1, 64 * 1024)
keep = libc.malloc(64 * 1024)  # last from the top: pins it, so free() cannot shrink the heap
for block in blocks:
    libc.free(block)
before = rss()
_malloc.trim()
print(before - rss())
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert int(done.stdout) > 150  # MiB returned
