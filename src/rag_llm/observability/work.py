"""The service's own work, beside its pools: embedder calls, queries, documents and chunks.

With the embedded default no call goes through an HTTP pool, yet the service embeds and
answers all the time; :data:`WORK` counts that, whatever the embedder, so ``/metrics``,
the dashboard and ``rag-llm top`` show it in every run. Counters only go up; the corpus
figures are what this process last saw of its store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, Literal

from rag_llm.observability.stats import LATENCY_BUCKETS, Histogram, HistogramSnapshot

__all__ = ["BATCH_BUCKETS", "WORK", "EmbedderWork", "ServiceWork", "WorkSnapshot"]

Where = Literal["local", "remote"]
# Texts per embedder call: one question, up to a few thousand chunks.
BATCH_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                        2048.0)
# Local models take longer than an HTTP round trip: seconds up to a minute.
_SLOW_BUCKETS: Final = (*LATENCY_BUCKETS, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class EmbedderWork:
    """One embedder's calls: how many, how many failed, texts, sizes and durations."""

    embedder: str
    where: Where
    calls: int
    errors: int
    texts: int
    batch: HistogramSnapshot
    seconds: HistogramSnapshot


@dataclass(frozen=True, slots=True)
class WorkSnapshot:
    """Everything :data:`WORK` has counted, at one moment."""

    embedders: tuple[EmbedderWork, ...] = ()
    queries: dict[str, int] = field(default_factory=dict)  # by answer mode
    retrieval: HistogramSnapshot | None = None
    answer: HistogramSnapshot | None = None
    documents: int | None = None
    chunks: int | None = None


class _Embedder:
    __slots__ = ("batch", "calls", "errors", "seconds", "texts")

    def __init__(self) -> None:
        self.calls = self.errors = self.texts = 0
        self.batch = Histogram(BATCH_BUCKETS)
        self.seconds = Histogram(_SLOW_BUCKETS)


class ServiceWork:
    """Thread-safe counters of embedder calls and queries; see the module."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._embedders: dict[tuple[str, Where], _Embedder] = {}
        self._queries: dict[str, int] = {}
        self._retrieval = Histogram(_SLOW_BUCKETS)
        self._answer = Histogram(_SLOW_BUCKETS)
        self._corpus: tuple[int, int] | None = None

    @contextmanager
    def embedding(self, embedder: str, where: Where, texts: int) -> Iterator[None]:
        """Count one embedder call of ``texts`` texts, timed, failed if it raises."""
        started = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                counts = self._embedders.get((embedder, where))
                if counts is None:
                    counts = self._embedders[(embedder, where)] = _Embedder()
                counts.calls += 1
                counts.errors += failed
                counts.texts += texts
                counts.batch.observe(texts)
                counts.seconds.observe(elapsed)

    def queried(self, mode: str, retrieval_s: float, answer_s: float) -> None:
        """Count one answered query, with its retrieval and answer times."""
        with self._lock:
            self._queries[mode] = self._queries.get(mode, 0) + 1
            self._retrieval.observe(retrieval_s)
            self._answer.observe(answer_s)

    def corpus(self, documents: int, chunks: int) -> None:
        """The store's size as this process last saw it."""
        with self._lock:
            self._corpus = (documents, chunks)

    def snapshot(self) -> WorkSnapshot:
        with self._lock:
            embedders = tuple(
                EmbedderWork(name, where, c.calls, c.errors, c.texts, c.batch.snapshot(),
                             c.seconds.snapshot())
                for (name, where), c in sorted(self._embedders.items()))
            documents, chunks = self._corpus if self._corpus is not None else (None, None)
            return WorkSnapshot(embedders, dict(self._queries), self._retrieval.snapshot(),
                                self._answer.snapshot(), documents, chunks)


WORK: Final = ServiceWork()
