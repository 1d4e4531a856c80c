"""The PostgreSQL store: chosen by URL, its password never shown, one-line errors at open,
migrations, HNSW search, one copy per source, two services sharing one database."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from pgkit import PASSWORD, PgServer
from ragkit import upstream_settings

from rag_llm.errors import ConfigError
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagService, RagSettings
from rag_llm.rag import stores as stores_module
from rag_llm.rag.store import DocumentContent, NewDocument, SearchFilter
from rag_llm.testing import UpstreamServer

if not os.environ.get("CI"):  # in CI a missing driver fails the run (see conftest.pg_server)
    pytest.importorskip("psycopg", reason="needs the postgres extra: pip install -e '.[dev]'")

from rag_llm.rag.pg_store import MIGRATIONS, PostgresStore

MODEL = "test/model"


def document(source: str, sha: str = "0" * 64) -> NewDocument:
    return NewDocument(id=f"id-{source}", source=source, title=source.title(),
                       media_type="text/plain", sha256=sha, size=10)


def test_a_url_selects_the_postgres_store_and_its_password_shows_nowhere(
    pg_server: PgServer, pg_url: str, tmp_path: Path,
) -> None:
    config = tmp_path / "rag.toml"
    config.write_text(f'[rag]\nstore = "{pg_url}"\nstore_pool_max_size = 3\n')
    settings = RagSettings.load(config, environ={})
    assert settings.store_password is not None
    assert settings.store_password.get_secret_value() == PASSWORD
    database = pg_url.rsplit("/", 1)[1]
    assert settings.store == f"postgresql://rag@127.0.0.1:{pg_server.port}/{database}"
    with stores_module.open_store(settings) as store:
        assert type(store) is PostgresStore
        assert store._pool.max_size == 3
        shown = f"{settings!r} {settings} {store!r} {settings.store}"
        for leak in (PASSWORD, "s3cret", "s3cret%3Ap%40ss"):
            assert leak not in shown
    postgres = RagSettings(store=pg_url.replace("postgresql://", "postgres://"))
    with stores_module.open_store(postgres) as store:
        assert type(store) is PostgresStore


def test_settings_for_server_stores_are_checked() -> None:
    with pytest.raises(ConfigError, match="store_pool_max_size"):
        RagSettings(store_pool_min_size=5, store_pool_max_size=2)
    with pytest.raises(ConfigError, match="hnsw_ef_search"):
        RagSettings(hnsw_ef_search=5000)
    with pytest.raises(ConfigError, match=r"unknown scheme 'mysql'.*postgresql://") as caught:
        RagSettings(store="mysql://root:hunter2@db/rag")
    assert "hunter2" not in str(caught.value)
    env = RagSettings.load(environ={"RAG_LLM_STORE": "postgresql://u@h/db",
                                    "RAG_LLM_STORE_PASSWORD": "pw",
                                    "RAG_LLM_HNSW_EF_SEARCH": "40"})
    assert (env.store, env.hnsw_ef_search) == ("postgresql://u@h/db", 40)
    assert env.store_password is not None
    assert "pw" not in repr(env)


def test_wrong_password_unreachable_server_and_bad_url_are_one_line_config_errors(
    pg_server: PgServer, pg_url: str,
) -> None:
    wrong = pg_url.replace(pg_url.split("@")[0], "postgresql://rag:wrong-secret")
    closed_port = pg_url.replace(f":{pg_server.port}/", ":1/")
    for url, fragment in ((wrong, "password authentication failed"),
                          (closed_port, "Connection refused"),
                          (pg_url.replace("127.0.0.1", "127.0.0.1:notaport"), "")):
        with pytest.raises(ConfigError) as caught:
            PostgresStore(url)
        message = str(caught.value)
        assert caught.value.field == "store"
        assert "\n" not in message
        assert fragment in message
        for leak in ("wrong-secret", "s3cret"):
            assert leak not in message
    assert "check the host, port, user, password" in str(caught.value) or \
        "not a valid" in str(caught.value)


def test_a_database_without_the_vector_extension_says_how_to_add_it(
    pg_server: PgServer, pg_url: str,
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with pg_server.admin() as conn:
        conn.execute("DROP ROLE IF EXISTS plain")
        conn.execute("CREATE ROLE plain LOGIN PASSWORD 'plainpw'")
        conn.execute(f'GRANT ALL ON DATABASE "{database}" TO plain')
    try:
        with pytest.raises(ConfigError, match=r"lacks the vector extension.*CREATE EXTENSION "
                                              r"vector; in .* as a superuser") as caught:
            PostgresStore(pg_server.url(database, user="plain", password="plainpw"))
        assert "plainpw" not in str(caught.value)
    finally:
        with pg_server.admin() as conn:
            conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM plain')
            conn.execute("DROP ROLE plain")


def test_migrations_run_once_and_a_newer_schema_is_refused(pg_url: str) -> None:
    with PostgresStore(pg_url), PostgresStore(pg_url) as store, \
            store._pool.connection() as conn:
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v, _ in MIGRATIONS]
        conn.execute("INSERT INTO schema_version(version) VALUES (99)")
    with pytest.raises(ConfigError, match="version 99, newer"):
        PostgresStore(pg_url)


def test_large_tables_are_searched_through_the_hnsw_index_with_high_recall(pg_url: str) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with PostgresStore(pg_url, exact_below=0, ef_search=64) as store:
        for start in range(0, 3000, 1000):
            store.replace_document(document(f"d{start}"),
                                   [f"c{i}" for i in range(start, start + 1000)],
                                   [1] * 1000, vectors[start:start + 1000].tolist(), MODEL)
        with store._pool.connection() as conn, conn.transaction():
            assert store._plan_search(conn, 10) is False
            setting = conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN " + "SELECT id FROM chunks ORDER BY embedding <=> %s LIMIT 10",
                (unit[0],)))
        assert setting == ("64",)
        assert "chunks_embedding_hnsw" in plan
        found = 0
        for query in rng.standard_normal((20, 16)):
            expected = {f"c{i}" for i in np.argsort(-(unit @ query))[:10]}
            hits = store.search(query.tolist(), k=10)
            assert len(hits) == 10
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            found += len(expected & {h.chunk.text for h in hits})
        assert found / 200 >= 0.9
    with PostgresStore(pg_url) as exact, exact._pool.connection() as conn, \
            conn.transaction():
        assert exact._plan_search(conn, 10) is True  # 3,000 chunks: below 10,000


def _filtered_plan(store: PostgresStore, query: np.ndarray, where: SearchFilter) -> str:
    """EXPLAIN of a filtered search, planned as ``store.search`` plans it."""
    from rag_llm.rag.pg_store import _SEARCH_IN

    ids = [d.id for d in store.documents() if d.source.startswith(where.source_prefix or "")
           and (where.document_ids is None or d.id in where.document_ids)]
    with store._pool.connection() as conn, conn.transaction():
        store._search_where(conn, query, 10, where)
        rows = conn.execute(b"EXPLAIN " + _SEARCH_IN.encode(), {"q": query, "k": 10,
                                                                  "ids": ids})
        return "\n".join(row[0] for row in rows)


def test_a_filtered_search_is_complete_through_the_index_and_exact_without(
    pg_url: str,
) -> None:
    rng = np.random.default_rng(5)
    size, documents = 500, 40  # 20,000 chunks: the planner prefers the index for a half
    vectors = rng.standard_normal((size * documents, 16)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with PostgresStore(pg_url, exact_below=1000, ef_search=64) as store:
        # One swap writes them all, and the index is built once after it.
        store.replace_all([DocumentContent(
            document(f"{'half' if n % 2 else 'rest'}/d{n}"),
            [f"c{i}" for i in range(n * size, n * size + size)], [1] * size,
            vectors[n * size:n * size + size]) for n in range(documents)], MODEL, {})
        with store._pool.connection() as conn:
            conn.execute("ANALYZE chunks")
        query = rng.standard_normal(16)
        one = SearchFilter(document_ids=frozenset({"id-rest/d4"}))  # 2.5 % of the chunks
        half = SearchFilter(source_prefix="half/")
        assert "chunks_embedding_hnsw" not in _filtered_plan(store, query, one)
        assert "chunks_embedding_hnsw" in _filtered_plan(store, query, half)
        expected = [f"c{i}" for i in 4 * size + np.argsort(-(unit[4 * size:5 * size] @ query))[:10]]
        assert [h.chunk.text for h in store.search(query.tolist(), 10, one)] == expected
        allowed = np.array([i for i in range(size * documents) if (i // size) % 2])
        best = {f"c{i}" for i in allowed[np.argsort(-(unit[allowed] @ query))[:10]]}
        hits = store.search(query.tolist(), 10, half)
        assert len(hits) == 10
        assert all(h.document.source.startswith("half/") for h in hits)
        assert len(best & {h.chunk.text for h in hits}) >= 9


def test_two_writers_of_one_source_end_with_one_copy(pg_url: str) -> None:
    with PostgresStore(pg_url, pool_max_size=8) as store:
        store.replace_document(document("seed"), ["s"], [1], [[1.0, 0.0]], MODEL)
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                start.wait()
                for round_ in range(5):
                    texts = [f"w{n} r{round_} c{i}" for i in range(20)]
                    store.replace_document(document("same"), texts, [1] * 20,
                                           [[1.0, float(i)] for i in range(20)], MODEL)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [d.source for d in store.documents()] == ["same", "seed"]
        chunks = store.chunks("id-same")
        assert [c.index for c in chunks] == list(range(20))
        assert len({c.text.split(" c")[0] for c in chunks}) == 1  # all from one write
        assert store.chunk_count() == 21


async def test_two_services_on_one_database_see_each_others_writes_at_once(
    upstream: UpstreamServer, pg_url: str, tmp_path: Path,
) -> None:
    locator = ServiceLocator(upstream_settings(upstream))
    settings = RagSettings(data_dir=tmp_path / "unused", store=pg_url)
    try:
        with RagService.from_locator(locator, settings, {}) as first, \
                RagService.from_locator(locator, settings, {}) as second:
            assert first.store is not second.store
            report = await first.ingest_files([("tides.txt", b"Tide pools hold anemones.")])
            [added] = report.documents
            assert [d.source for d in await second.documents()] == ["tides.txt"]
            citations = await second.retrieve("anemones in tide pools")
            assert [c.source for c in citations] == ["tides.txt"]
            assert second.status()["chunks"] == added.chunks
            assert await first.delete(added.id) is True
            assert await second.documents() == []
            assert await first.documents() == []
            assert await second.retrieve("anemones in tide pools") == ()
    finally:
        await locator.cleanup()


def test_the_hnsw_index_is_built_by_the_write_that_makes_the_table_large(pg_url: str) -> None:
    def indexed(store: PostgresStore) -> bool:
        with store._pool.connection() as conn:
            row = conn.execute("SELECT to_regclass('chunks_embedding_hnsw')").fetchone()
        return row is not None and row[0] is not None

    rows = [[1.0, float(i)] for i in range(30)]
    with PostgresStore(pg_url, exact_below=50) as store:
        store.replace_document(document("a"), [f"a{i}" for i in range(30)], [1] * 30, rows,
                               MODEL)
        assert not indexed(store)  # 30 chunks: searched exactly, no index to maintain
        store.replace_document(document("b"), [f"b{i}" for i in range(30)], [1] * 30, rows,
                               MODEL)
        assert indexed(store)
        assert len(store.search([1.0, 3.0], k=60)) == 60


def test_writers_crossing_the_index_threshold_together_all_succeed(pg_url: str) -> None:
    with PostgresStore(pg_url, exact_below=100, pool_max_size=8) as store:
        store.replace_document(document("seed"), ["s"], [1], [[1.0, 0.0]], MODEL)
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                start.wait()
                store.replace_document(document(f"w{n}"), [f"w{n} c{i}" for i in range(40)],
                                       [1] * 40, [[1.0, float(i)] for i in range(40)], MODEL)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert store.chunk_count() == 321
        with store._pool.connection() as conn:
            row = conn.execute("SELECT to_regclass('chunks_embedding_hnsw')").fetchone()
        assert row is not None
        assert row[0] is not None


def _index_options(store: PostgresStore) -> tuple[list[str] | None, str, bool]:
    """The index's reloptions, its definition (pg_indexes) and whether it is valid."""
    with store._pool.connection() as conn:
        row = conn.execute(
            "SELECT c.reloptions, i.indexdef, x.indisvalid FROM pg_class c "
            "JOIN pg_indexes i ON i.indexname = c.relname "
            "JOIN pg_index x ON x.indexrelid = c.oid "
            "WHERE c.relname = 'chunks_embedding_hnsw'").fetchone()
    assert row is not None, "no HNSW index"
    return row[0], row[1], row[2]


def test_the_hnsw_index_is_built_with_the_configured_m_and_ef_construction(
    pg_url: str,
) -> None:
    settings = RagSettings(store=pg_url, hnsw_m=12, hnsw_ef_construction=40,
                           exact_search_below=50)
    rows = [[1.0, float(i)] for i in range(60)]
    with PostgresStore.from_settings(settings) as store:
        assert (store.m, store.ef_construction) == (12, 40)
        store.replace_document(document("a"), [f"a{i}" for i in range(60)], [1] * 60, rows,
                               MODEL)
        options, definition, valid = _index_options(store)
        assert sorted(options or []) == ["ef_construction=40", "m=12"]
        assert "USING hnsw (embedding vector_cosine_ops)" in definition
        assert valid
        with store._pool.connection() as conn:  # the build's memory was this session's only
            row = conn.execute("SELECT current_setting('maintenance_work_mem')").fetchone()
            default = conn.execute("SELECT boot_val || coalesce(unit, '') FROM pg_settings "
                                   "WHERE name = 'maintenance_work_mem'").fetchone()
        assert row is not None
        assert default is not None
        assert row[0] in ("64MB", default[0])


def test_hnsw_build_settings_are_checked() -> None:
    assert (RagSettings().hnsw_m, RagSettings().hnsw_ef_construction) == (16, 64)
    with pytest.raises(ConfigError, match="hnsw_m"):
        RagSettings(hnsw_m=1)
    with pytest.raises(ConfigError, match="hnsw_m"):
        RagSettings(hnsw_m=101)
    with pytest.raises(ConfigError, match=r"hnsw_ef_construction.*2 \* hnsw_m = 64"):
        RagSettings(hnsw_m=32, hnsw_ef_construction=40)
    with pytest.raises(ConfigError, match="hnsw_ef_construction"):
        RagSettings(hnsw_ef_construction=1001)
    with pytest.raises(ConfigError, match=r"hnsw_build_memory_mb.*between 64"):
        RagSettings(hnsw_build_memory_mb=16)
    env = RagSettings.load(environ={"RAG_LLM_HNSW_M": "24",
                                    "RAG_LLM_HNSW_EF_CONSTRUCTION": "128",
                                    "RAG_LLM_HNSW_BUILD_MEMORY_MB": "4096"})
    assert (env.hnsw_m, env.hnsw_ef_construction, env.hnsw_build_memory_mb) == (24, 128, 4096)


def test_a_write_as_large_as_the_table_is_indexed_afresh_not_row_by_row(pg_url: str) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((900, 8)).astype(np.float32)
    with PostgresStore(pg_url, exact_below=100, m=8, ef_construction=32) as store:
        store.replace_document(document("small"), [f"s{i}" for i in range(300)], [1] * 300,
                               vectors[:300].tolist(), MODEL)
        with store._pool.connection() as conn:
            first = conn.execute("SELECT 'chunks_embedding_hnsw'::regclass::oid").fetchone()
        store.replace_document(document("tiny"), ["t0"], [1], [vectors[300].tolist()], MODEL)
        with store._pool.connection() as conn:  # a small write goes into the index
            kept = conn.execute("SELECT 'chunks_embedding_hnsw'::regclass::oid").fetchone()
        assert kept == first
        store.replace_document(document("large"), [f"l{i}" for i in range(600)], [1] * 600,
                               vectors[300:].tolist(), MODEL)
        with store._pool.connection() as conn:
            rebuilt = conn.execute("SELECT 'chunks_embedding_hnsw'::regclass::oid").fetchone()
            locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND database = (SELECT oid FROM pg_database "
                                 "WHERE datname = current_database())").fetchone()
        assert rebuilt != first
        assert locks == (0,)  # the builder let go of its lock
        options, _, valid = _index_options(store)
        assert valid
        assert sorted(options or []) == ["ef_construction=32", "m=8"]
        assert store.chunk_count() == 901
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        hits = store.search(vectors[700].tolist(), k=5)
        assert hits[0].chunk.text == "l400"
        assert hits[0].score == pytest.approx(float(unit[700] @ unit[700]), abs=1e-5)


def test_an_index_left_invalid_by_a_killed_build_is_rebuilt(pg_url: str) -> None:
    rows = [[1.0, float(i)] for i in range(60)]
    with PostgresStore(pg_url, exact_below=50) as store:
        store.replace_document(document("a"), [f"a{i}" for i in range(60)], [1] * 60, rows,
                               MODEL)
        with store._pool.connection() as conn:  # as a CREATE INDEX CONCURRENTLY cut short
            conn.execute("UPDATE pg_index SET indisvalid = false "
                         "WHERE indexrelid = 'chunks_embedding_hnsw'::regclass")
        assert _index_options(store)[2] is False
        store.replace_document(document("b"), ["b0"], [1], [[0.0, 1.0]], MODEL)
        assert _index_options(store)[2] is True
