"""Types and checks the resilience policies share: clocks, random sources, number validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeAlias

from rag_llm.validation import check_number

__all__ = ["Clock", "Random", "check_number", "retry_after_of"]

# Seconds on a monotonic scale; time.monotonic in production, a fake in tests.
Clock: TypeAlias = Callable[[], float]


class Random(Protocol):
    """A source of uniform floats in [0, 1): ``random.Random`` or a test double."""

    def random(self) -> float: ...


def retry_after_of(exc: BaseException | None) -> float | None:
    """The upstream's ``retry_after`` seconds on ``exc``, when it carries a usable one."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None
