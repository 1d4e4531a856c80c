"""Types and checks the resilience policies share: clocks, random sources, number validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeAlias

from rag_llm.errors import ConfigError

__all__ = ["Clock", "Random", "check_number", "retry_after_of"]

# Seconds on a monotonic scale; time.monotonic in production, a fake in tests.
Clock: TypeAlias = Callable[[], float]


class Random(Protocol):
    """A source of uniform floats in [0, 1): ``random.Random`` or a test double."""

    def random(self) -> float: ...


def check_number(
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float | None = None,
    integer: bool = False,
    exclusive: bool = False,
) -> float:
    """``value`` if it is a finite number in range, else ``ConfigError`` naming ``name``."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(name, value, f"must be {'an integer' if integer else 'a number'}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ConfigError(name, value, "must be finite")
    if number < minimum or (exclusive and number == minimum):
        raise ConfigError(name, value, f"must be {'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None and number > maximum:
        raise ConfigError(name, value, f"must be <= {maximum:g}")
    return number


def retry_after_of(exc: BaseException | None) -> float | None:
    """The upstream's ``retry_after`` seconds on ``exc``, when it carries a usable one."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None
