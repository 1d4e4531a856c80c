"""Several worker processes behind one service: each shares its figures through a directory.

``rag-llm serve --workers N`` runs N uvicorn workers, each with its own providers and
pools. The parent makes a fresh directory and names it in ``$RAG_LLM_WORKER_DIR``; every
worker writes a snapshot there every :data:`SNAPSHOT_INTERVAL_S` seconds and once more at
exit: its pid, rag-llm's metric families, and its pools (all of them, and per provider
kind as ``/health`` groups them). Whichever worker answers ``/metrics``, ``/health`` or the
dashboard reads its own figures live and the other workers' from their latest snapshots,
so every worker answers with the same service-wide totals. A worker writes its snapshot
before it answers ``/metrics`` (:meth:`WorkerSet.render_metrics`), so a later answer by any
worker counts at least what it reported: a counter never goes back from one scrape to the
next, whichever worker answers.

How the totals add up (:func:`merge_families`):

* counters and histograms are summed per label set, over every worker the service has
  had, exited ones included, so they never go down when a worker is replaced;
* gauges are summed over the workers still running (connections held, requests waiting,
  attempts in flight, and endpoints per breaker state or health, each worker keeping its
  own breakers and health checks), except the configured limits
  (``rag_llm_pool_max_connections``, ``rag_llm_pool_max_keepalive_connections``), which
  are the largest worker's: each worker holds that many, the service up to
  ``rag_llm_workers`` times as many; so are the store's documents and chunks, one store
  serving them all;
* ``rag_llm_workers`` counts the workers running.

No sample gets a worker label: each is the service-wide total.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily, Metric

from rag_llm.metrics import collect_metrics, render_families
from rag_llm.observability.events import get_logger
from rag_llm.observability.stats import ClientStatsSnapshot, HistogramSnapshot
from rag_llm.pool import ClientSnapshot, PoolSnapshot, all_snapshots, merge_pools

__all__ = ["SNAPSHOT_INTERVAL_S", "WORKER_DIR_ENV", "WorkerSet", "merge_families",
           "worker_dir"]

WORKER_DIR_ENV: Final = "RAG_LLM_WORKER_DIR"
SNAPSHOT_INTERVAL_S: Final = 0.5
# Gauges the same in every worker, not shares of a whole: the configured limits, and the
# store's size (one store behind them all). The largest is shown, not the sum.
_SETTINGS: Final = frozenset({"rag_llm_pool_max_connections",
                              "rag_llm_pool_max_keepalive_connections",
                              "rag_llm_documents", "rag_llm_chunks"})
_SUFFIX: Final = ".json"
_log = get_logger()

_Groups = Mapping[str, list[PoolSnapshot]]
_TYPES: Final[dict[str, Any]] = {
    cls.__name__: cls
    for cls in (PoolSnapshot, ClientSnapshot, ClientStatsSnapshot, HistogramSnapshot)}


def _encode(value: Any) -> Any:
    """``value`` (snapshots, dicts with tuple keys, tuples) as JSON-ready data."""
    if is_dataclass(value) and not isinstance(value, type):
        return {"@": type(value).__name__,
                **{f.name: _encode(getattr(value, f.name)) for f in fields(value)}}
    if isinstance(value, dict):
        return {"@": "dict", "items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if isinstance(value, dict):
        kind = value["@"]
        if kind == "dict":
            return {_decode(k): _decode(v) for k, v in value["items"]}
        return _TYPES[kind](**{k: _decode(v) for k, v in value.items() if k != "@"})
    return value


def _family(metric: Metric) -> dict[str, Any]:
    return {"name": metric.name, "type": metric.type, "documentation": metric.documentation,
            "samples": [[s.name, s.labels, s.value] for s in metric.samples]}


def merge_families(readings: Iterable[tuple[bool, list[dict[str, Any]]]]) -> list[Metric]:
    """The families of several workers, ``(running, families)`` each, added up.

    Counters and histograms are summed over every reading, gauges over the running
    workers' only; the configured limits take the largest value. Families keep the
    order in which they first appear, and samples theirs.
    """
    heads: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for running, families in readings:
        for family in families:
            name, kind = family["name"], family["type"]
            heads.setdefault(name, (kind, family["documentation"]))
            values = sums.setdefault(name, {})
            if kind == "gauge" and not running:
                continue
            for sample, labels, value in family["samples"]:
                key = (sample, tuple(sorted(labels.items())))
                old = values.get(key)
                if old is None:
                    values[key] = value
                else:
                    values[key] = max(old, value) if name in _SETTINGS else old + value
    merged = []
    for name, (kind, documentation) in heads.items():
        metric = Metric(name, documentation, kind)
        for (sample, labels), value in sums[name].items():
            metric.add_sample(sample, dict(labels), value)
        merged.append(metric)
    return merged


@dataclass(frozen=True, slots=True)
class _Reading:
    """Another worker's latest snapshot."""

    pid: int
    running: bool
    families: list[dict[str, Any]]
    pools: list[PoolSnapshot]
    groups: dict[str, list[PoolSnapshot]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not one of ours any more
        return False
    return True


def _read(path: Path) -> _Reading | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pid = int(data["pid"])
        return _Reading(
            pid=pid, running=not data["final"] and _alive(pid), families=data["metrics"],
            pools=[_decode(p) for p in data["pools"]],
            groups={kind: [_decode(p) for p in group] for kind, group in data["groups"].items()})
    except (OSError, ValueError, KeyError, TypeError):  # gone, or not a snapshot of ours
        return None


class WorkerSet:
    """This worker's view of the whole service, through the snapshots in ``directory``.

    ``groups`` gives this worker's pools per provider kind (as ``/health`` shows them),
    ``pools`` every pool of the process (as the dashboard shows them).
    """

    def __init__(self, directory: Path, groups: Callable[[], _Groups], *,
                 pools: Callable[[], list[PoolSnapshot]] = all_snapshots,
                 pid: int | None = None) -> None:
        self.directory = directory
        self._groups = groups
        self._pools = pools
        self.pid = os.getpid() if pid is None else pid
        self._writing = threading.Lock()
        self._final = False

    @classmethod
    def from_environment(cls, groups: Callable[[], _Groups]) -> WorkerSet | None:
        """The set named by ``$RAG_LLM_WORKER_DIR``, or None when this is the only process."""
        directory = os.environ.get(WORKER_DIR_ENV)
        return cls(Path(directory), groups) if directory else None

    @property
    def _path(self) -> Path:
        return self.directory / f"{self.pid}{_SUFFIX}"

    def write(self, *, final: bool = False) -> list[dict[str, Any]]:
        """Write this worker's snapshot, and return the metric families it holds; ``final``
        at exit, after which its gauges count no more."""
        # One writer at a time, each reading the figures under the lock: a snapshot is
        # never replaced by one read before it, nor torn by a second writer.
        with self._writing:
            self._final = final = final or self._final  # a /metrics after exit stays final
            metrics = [_family(m) for m in collect_metrics()]
            data = {"pid": self.pid, "time": time.time(), "final": final, "metrics": metrics,
                    "pools": [_encode(p) for p in self._pools()],
                    "groups": {kind: [_encode(p) for p in group]
                               for kind, group in self._groups().items()}}
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temporary, self._path)
        return metrics

    def _others(self) -> list[_Reading]:
        found = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if path != self._path:
                reading = _read(path)
                if reading is not None:
                    found.append(reading)
        return found

    def pids(self) -> list[int]:
        """The workers running now, this one included."""
        return sorted({self.pid, *(r.pid for r in self._others() if r.running)})

    def workers(self) -> dict[str, Any]:
        """``{"count": N, "pids": [...]}``: what ``/health`` and the dashboard add."""
        pids = self.pids()
        return {"count": len(pids), "pids": pids}

    def pools(self) -> list[PoolSnapshot]:
        """Every running worker's pools: this one's now, the others' as last written."""
        return [*self._pools(), *(p for r in self._others() if r.running for p in r.pools)]

    def groups(self) -> dict[str, list[PoolSnapshot]]:
        """Per provider kind, the pools of every running worker, merged per endpoint and
        role: one entry per pool of one worker, with the whole service's figures."""
        found: dict[str, list[PoolSnapshot]] = {k: list(g) for k, g in self._groups().items()}
        for reading in self._others():
            if reading.running:
                for kind, group in reading.groups.items():
                    found.setdefault(kind, []).extend(group)
        return {kind: _per_endpoint(group) for kind, group in found.items()}

    def families(self, own: list[dict[str, Any]] | None = None) -> list[Metric]:
        """The service's rag-llm metric families: every worker's added up, as the module
        says, and ``rag_llm_workers``; ``own`` is this worker's, read now unless given."""
        if own is None:
            own = [_family(m) for m in collect_metrics()]
        others = self._others()
        readings = [(True, own), *((r.running, r.families) for r in others)]
        workers = GaugeMetricFamily("rag_llm_workers",
                                    "Worker processes whose figures these totals add up")
        workers.add_metric([], 1 + sum(r.running for r in others))
        return [*merge_families(readings), workers]

    def render_metrics(self) -> bytes:
        """The exposition of :meth:`families`, this worker's snapshot written first (see
        the module); the dashboard's frames read the families without writing."""
        return render_families(self.families(self.write()))

    async def run(self, interval: float = SNAPSHOT_INTERVAL_S) -> None:
        """Write a snapshot every ``interval`` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:  # the directory went away: the service is stopping
                _log.warning("worker_snapshot_failed", error=repr(exc))
            await asyncio.sleep(interval)


def _per_endpoint(group: list[PoolSnapshot]) -> list[PoolSnapshot]:
    by_pool: dict[tuple[str, str], list[PoolSnapshot]] = {}
    for snapshot in group:
        by_pool.setdefault((snapshot.endpoint, snapshot.role), []).append(snapshot)
    return [merged for same in by_pool.values() for merged in merge_pools(same)]


@contextlib.contextmanager
def worker_dir() -> Iterator[Path]:
    """A fresh directory for the workers' snapshots, named in ``$RAG_LLM_WORKER_DIR`` while
    the block runs; removed, and the variable restored, at its end."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="rag-llm-workers-"))
    before = os.environ.get(WORKER_DIR_ENV)
    os.environ[WORKER_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if before is None:
            os.environ.pop(WORKER_DIR_ENV, None)
        else:
            os.environ[WORKER_DIR_ENV] = before
        shutil.rmtree(directory, ignore_errors=True)
