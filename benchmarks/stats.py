"""Percentiles of one run's latencies, and the median and spread of repeated runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from rag_llm.observability.stats import percentile as stats_percentile

__all__ = ["latency_summary", "percentile", "spread"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly; nan if empty."""
    value = stats_percentile(sorted(values), q)
    return math.nan if value is None else value


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean in milliseconds of one run's request latencies."""
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        return {"p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan,
                "max_ms": math.nan, "mean_ms": math.nan}
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and quartiles of repeated measurements (nan values dropped)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan,
                "q1": math.nan, "q3": math.nan, "n": 0}
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "q1": percentile(finite, 25),
        "q3": percentile(finite, 75),
        "n": len(finite),
    }
