"""Stopping the suite's child processes: politely first, by force when they hang."""

from __future__ import annotations

import subprocess
from typing import Any, Final

__all__ = ["stop_process"]

# Seconds a process gets after SIGTERM before SIGKILL.
_TERM_GRACE: Final = 3.0


def stop_process(process: subprocess.Popen[Any], grace: float) -> None:
    """Wait ``grace`` seconds for ``process`` to exit, then send SIGTERM, then SIGKILL."""
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(timeout=_TERM_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
