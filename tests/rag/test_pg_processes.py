"""Several writer processes on one PostgreSQL store: overlapping ingests end with every
document once, and writers killed with SIGKILL mid-ingest leave no half document."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time

import pytest
from pgkit import PgServer, corpus_text, ingest_worker, ingestor

from rag_llm.rag.sqlite_store import SQLiteStore

if not os.environ.get("CI"):  # in CI a missing driver fails the run (see conftest.pg_server)
    pytest.importorskip("psycopg", reason="needs the postgres extra: pip install -e '.[dev]'")

from rag_llm.rag.pg_store import PostgresStore

DOCUMENTS = 16
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def clean_counts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Chunks per source after a clean, single-process ingest of the whole corpus."""
    with SQLiteStore(tmp_path_factory.mktemp("clean")) as store:
        files = [(f"doc{n}.txt", corpus_text(n).encode()) for n in range(DOCUMENTS)]
        report = asyncio.run(ingestor(store).ingest_files(files))
        assert report.failures == ()
        return {d.source: d.chunks for d in store.documents()}


def wait_in_transaction(pg_server: PgServer, url: str, seconds: float) -> bool:
    """Wait until a writer of ``url``'s database is inside a transaction; False on timeout."""
    import psycopg

    deadline = time.monotonic() + seconds
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                               "application_name = 'rag-llm' AND xact_start IS NOT NULL "
                               "AND pid <> pg_backend_pid()",
                               (url.rsplit("/", 1)[1],)).fetchone()
            if row and row[0]:
                return True
    return False


def stored_counts(pg_server: PgServer, url: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per source: the count its document row records, and the chunk rows actually there."""
    database = url.rsplit("/", 1)[1]
    import psycopg

    with psycopg.connect(pg_server.url(database)) as conn:
        recorded = dict(conn.execute("SELECT source, chunks FROM documents").fetchall())
        actual = dict(conn.execute(
            "SELECT d.source, count(c.id) FROM documents d LEFT JOIN chunks c "
            "ON c.document_id = d.id GROUP BY d.source").fetchall())
        gaps = conn.execute("SELECT document_id FROM chunks GROUP BY document_id "
                            "HAVING max(idx) + 1 <> count(*)").fetchall()
        assert gaps == []
    return recorded, actual


@pytest.mark.timeout(180)
def test_four_processes_ingesting_overlapping_corpora_store_each_document_once(
    pg_server: PgServer, pg_url: str, clean_counts: dict[str, int],
) -> None:
    with PostgresStore(pg_url):  # migrate once here: the writers then race on data only
        pass
    shares = [[(start + i) % DOCUMENTS for i in range(10)] for start in (0, 4, 8, 12)]
    start = SPAWN.Barrier(len(shares))
    workers = [SPAWN.Process(target=ingest_worker, args=(pg_url, share, 1, start))
               for share in shares]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(150)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    recorded, actual = stored_counts(pg_server, pg_url)
    assert recorded == clean_counts
    assert actual == clean_counts
    with PostgresStore(pg_url) as store:
        assert [d.source for d in store.documents()] == sorted(clean_counts)
        assert store.chunk_count() == sum(clean_counts.values())


@pytest.mark.timeout(180)
def test_writers_killed_mid_ingest_leave_no_half_document(
    pg_server: PgServer, pg_url: str, clean_counts: dict[str, int],
) -> None:
    with PostgresStore(pg_url):
        pass
    randomness = random.Random(11)
    kills = mid_transaction = 0
    for _attempt in range(4):
        worker = SPAWN.Process(target=ingest_worker,
                               args=(pg_url, list(range(DOCUMENTS)), 1000))
        worker.start()
        deadline = time.monotonic() + 60
        while not stored_counts(pg_server, pg_url)[0] and time.monotonic() < deadline:
            time.sleep(0.05)  # until its first commit, then kill at a random point after
        time.sleep(randomness.uniform(0.05, 1.5))
        # Then, for a while, wait to catch it mid-write.
        mid_transaction += wait_in_transaction(pg_server, pg_url, 2.0)
        assert worker.is_alive()
        worker.kill()
        worker.join(10)
        kills += worker.exitcode == -9
        recorded, actual = stored_counts(pg_server, pg_url)
        assert recorded, "the writer stored nothing before it was killed"
        assert actual == recorded
        assert all(clean_counts[source] == count for source, count in recorded.items())
    assert kills == 4
    assert mid_transaction >= 2, f"only {mid_transaction} of 4 kills hit a transaction"
    # The killed writers' locks went with their connections: a new writer finishes.
    ingest_worker(pg_url, list(range(DOCUMENTS)))
    recorded, actual = stored_counts(pg_server, pg_url)
    assert recorded == actual == clean_counts
