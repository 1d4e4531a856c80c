"""Measure top-k vector search at N chunks x D dims for the store's candidate indexes.

Candidates: numpy over a memory-mapped float32 file, numpy over an in-memory array (the
floor), and sqlite-vec's ``vec0`` table (brute-force KNN in C). Then the chosen one end to
end: ``SQLiteStore.search`` (rag_llm.rag.sqlite_store), which adds fetching the hits' rows,
measured warm and right after a write (when it reloads its slot map).
The stdlib ``sqlite3`` of many Python builds cannot load extensions; sqlite-vec is then run
through ``apsw`` when it is installed, and skipped otherwise.

    .venv/bin/python scripts/bench_vector_search.py --chunks 100000 --dims 384
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _unit(rows: int, dims: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((rows, dims), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def _top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best])]


def _timed(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> list[float]:
    search(queries[0])  # warm caches and lazy setup
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _sqlite_vec(vectors: np.ndarray, workdir: Path, k: int) -> Callable[[np.ndarray], Any] | None:
    import sqlite_vec

    connection: Any
    try:
        import sqlite3

        connection = sqlite3.connect(workdir / "vec.sqlite")
        connection.enable_load_extension(True)
    except AttributeError:  # this sqlite3 was built without extension loading
        try:
            import apsw
        except ImportError:
            return None
        connection = apsw.Connection(str(workdir / "vec.sqlite"))
        connection.enable_load_extension(True)
    connection.load_extension(sqlite_vec.loadable_path())
    dims = vectors.shape[1]
    connection.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{dims}] "
                       "distance_metric=cosine)")
    connection.execute("BEGIN")
    for start in range(0, len(vectors), 10_000):
        block = vectors[start:start + 10_000]
        connection.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                               [(start + i + 1, row.tobytes()) for i, row in enumerate(block)])
    connection.execute("COMMIT")
    sql = "SELECT rowid, distance FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance"

    def search(query: np.ndarray) -> Any:
        return list(connection.execute(sql, (query.tobytes(), k)))

    return search


def _store(vectors: np.ndarray, workdir: Path, k: int,
           queries: np.ndarray) -> dict[str, list[float]]:
    from rag_llm.rag.sqlite_store import SQLiteStore
    from rag_llm.rag.store import NewDocument

    per_document = 1000
    results: dict[str, list[float]] = {}
    with SQLiteStore(workdir / "store") as store:
        started = time.perf_counter()
        for n, start in enumerate(range(0, len(vectors), per_document)):
            block = vectors[start:start + per_document]
            document = NewDocument(id=f"d{n}", source=f"doc{n}.txt", title="t",
                                   media_type="text/plain", sha256="0" * 64, size=1)
            store.replace_document(document, [f"chunk {start + i}" for i in range(len(block))],
                                   [1] * len(block), block, "bench/model")
        print(f"SQLiteStore: storing {len(vectors)} chunks took "
              f"{time.perf_counter() - started:.1f} s")
        results["SQLiteStore.search"] = _timed(lambda q: store.search(q, k), queries)
        after_write = []
        for query in queries[:10]:
            store.delete_document("missing")  # a write: the next search reloads its map
            started = time.perf_counter()
            store.search(query, k)
            after_write.append((time.perf_counter() - started) * 1000)
        results["  ... after a write"] = after_write
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    vectors = _unit(args.chunks, args.dims, seed=1)
    queries = _unit(args.queries, args.dims, seed=2)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "vectors.f32"
        vectors.tofile(path)
        mapped = np.memmap(path, dtype=np.float32, mode="r", shape=vectors.shape)
        results["numpy, in memory"] = _timed(lambda q: _top_k(vectors, q, args.top_k), queries)
        results["numpy, memory-mapped"] = _timed(lambda q: _top_k(mapped, q, args.top_k),
                                                  queries)
        started = time.perf_counter()
        vec_search = _sqlite_vec(vectors, workdir, args.top_k)
        load_s = time.perf_counter() - started
        if vec_search is None:
            print("sqlite-vec: skipped (sqlite3 cannot load extensions and apsw is missing)")
        else:
            results["sqlite-vec vec0"] = _timed(vec_search, queries)
            print(f"sqlite-vec: inserting {args.chunks} vectors took {load_s:.1f} s")
        expected = [int(i) for i in _top_k(vectors, queries[0], args.top_k)]
        assert [int(i) for i in _top_k(mapped, queries[0], args.top_k)] == expected
        if vec_search is not None:
            assert [row[0] - 1 for row in vec_search(queries[0])] == expected
        results.update(_store(vectors, workdir, args.top_k, queries))
    print(f"\n{args.chunks} chunks x {args.dims} dims, top-{args.top_k}, "
          f"{args.queries} queries (ms)")
    print(f"{'index':<24}{'median':>10}{'p95':>10}{'max':>10}")
    for name, times in results.items():
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        print(f"{name:<24}{statistics.median(times):>10.2f}{p95:>10.2f}{times[-1]:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
