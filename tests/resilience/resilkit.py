"""Test doubles for the resilience tests: a clock that moves only when told, a fixed RNG."""

from __future__ import annotations

from hypothesis import settings

# No example database (it would write .hypothesis/ into the checkout) and no per-example
# deadline (the suite must not flake on a slow machine).
HYPOTHESIS = settings(database=None, deadline=None, max_examples=200)


class FakeClock:
    """Monotonic seconds that advance only through ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class FixedRandom:
    """Returns the same draw every time: 0.0 is the shortest jitter, 0.999... the longest."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value
