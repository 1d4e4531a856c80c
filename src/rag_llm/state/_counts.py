"""What shared state counts: lease waits, limiter denials, Redis errors and fallbacks.

The counters live apart from their :class:`~rag_llm.state.StateBackend` in a
:class:`~rag_llm.observability.stats.Ledger`, so that a collected backend's totals are
folded into the process's and the exported counters never go down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Final

from rag_llm.observability.stats import Ledger

__all__ = ["STATE_COUNTS", "StateCounts", "StateReading", "counted_state"]


@dataclass(frozen=True, slots=True)
class StateReading:
    """One provider's shared-state counters; they only ever go up."""

    provider: str
    lease_waits: int = 0  # calls that found every global_max_in_flight slot held
    lease_wait_seconds: float = 0.0  # time those calls waited for a slot
    denials: int = 0  # calls the rate limits (shared, or local in a fallback) refused
    errors: int = 0  # Redis commands that failed (refused, reset, slower than timeout)
    fallbacks: int = 0  # limits applied locally because Redis was unavailable


class StateCounts:
    """A backend's counters; ``add`` is called from any thread."""

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def read(self, provider: str) -> StateReading:
        with self._lock:
            values = dict(self._values)
        return StateReading(provider, lease_waits=int(values.get("lease_waits", 0)),
                            lease_wait_seconds=values.get("lease_wait_seconds", 0.0),
                            denials=int(values.get("denials", 0)),
                            errors=int(values.get("errors", 0)),
                            fallbacks=int(values.get("fallbacks", 0)))


_NUMBERS: Final = tuple(f.name for f in fields(StateReading) if f.name != "provider")


def _fold(readings: Iterable[StateReading]) -> list[StateReading]:
    merged: dict[str, dict[str, float]] = {}
    for r in readings:
        into = merged.setdefault(r.provider, dict.fromkeys(_NUMBERS, 0))
        for name in _NUMBERS:
            into[name] += getattr(r, name)
    return [StateReading(provider, lease_waits=int(v["lease_waits"]),
                         lease_wait_seconds=v["lease_wait_seconds"], denials=int(v["denials"]),
                         errors=int(v["errors"]), fallbacks=int(v["fallbacks"]))
            for provider, v in merged.items()]


STATE_COUNTS: Final[Ledger[tuple[str, StateCounts], StateReading]] = Ledger(
    lambda held: [held[1].read(held[0])], _fold)


def counted_state() -> list[StateReading]:
    """The shared-state counters of every backend this process has had, collected ones
    folded, summed by provider."""
    return _fold(STATE_COUNTS.readings())
