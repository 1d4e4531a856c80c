"""A server-grade store: PostgreSQL with pgvector, for several processes and hosts at once.

``[rag] store = "postgresql://user:password@host:5432/db"`` (or ``postgres://``) opens it;
it needs the ``postgres`` extra (psycopg 3, psycopg_pool, pgvector) and a server with the
pgvector extension (0.5 or later, for HNSW). Opening it connects, creates the ``vector``
extension if the database lacks it (that needs a role allowed to), and runs the pending
versioned migrations under an advisory lock (table ``schema_version``), so there is no SQL to
run by hand and several processes may open one database at once.

Layout: ``documents`` (one row per source, unique), ``chunks`` (text, token count and a
``vector`` column, cascading from its document) and ``rag_store``, one row holding the
embedding model and dimension the vectors came from, as SQLiteStore remembers them. The
vector column takes its dimension at the first write, when it is known; a store emptied of
chunks may switch model and dimension, as SQLiteStore may. The HNSW cosine index
(``chunks_embedding_hnsw``, with ``[rag] hnsw_m`` and ``hnsw_ef_construction``) is built after
the write that brings the table to ``exact_search_below`` chunks, CONCURRENTLY (writers and
searches go on meanwhile; one builder at a time) and with ``maintenance_work_mem`` raised for
the build so that the graph is built in memory; below that size search is exact and needs no
index. Inserting into the index is what makes a write slow (each row is a graph search), so
a write at least as large as the table (and the threshold) drops the index, is COPYed bare
and rebuilds it: a build takes rows several times faster than inserts do, and rebuilding
only when a write doubles the table keeps all rebuilds together under one build's work per
row. An index left invalid by a killed build is dropped and rebuilt by the next write.

Writes: ``replace_document`` is one transaction (delete the old version, insert the document,
binary COPY of its chunks and vectors), serialised per source by a transaction-level
advisory lock, so two writers of one source end with one copy and a writer killed at any
point leaves no half document. Reads and searches see every committed write at once, from
any process.

Search: cosine similarity (``1 - (embedding <=> query)``), through the HNSW index with
``SET LOCAL hnsw.ef_search`` (``[rag] hnsw_ef_search``, default 100, raised to k when k is
larger), or exact (a sequential scan, every distance computed) while the table holds fewer
than ``[rag] exact_search_below`` chunks (default 10,000: there an exact scan costs a few
milliseconds and approximation would only lose recall). The size is the planner's estimate
(``pg_class.reltuples``), or a count bounded at the threshold while the table has never been
analysed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from rag_llm.errors import ConfigError
from rag_llm.rag.sqlite_store import _content_rows, _unit_rows
from rag_llm.rag.store import (
    ChunkRecord,
    DocumentContent,
    DocumentRecord,
    NewDocument,
    SearchFilter,
    SearchHit,
)
from rag_llm.rag.stores import split_password

if TYPE_CHECKING:
    from rag_llm.rag.settings import RagSettings

__all__ = ["MIGRATIONS", "PostgresStore"]

# Keys of the advisory locks: (namespace, key) pairs, the namespace ours ("rag" in ASCII).
_LOCK_NAMESPACE: Final = 0x726167
_MIGRATION_LOCK: Final = 0
_INDEX_LOCK: Final = 1
# Versioned migrations, applied in order at open, each in the transaction that records it.
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (1, """
CREATE TABLE rag_store (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    embedding_model text, dimensions integer);
INSERT INTO rag_store DEFAULT VALUES;
CREATE TABLE documents (
    id text PRIMARY KEY, source text NOT NULL UNIQUE, title text NOT NULL,
    media_type text NOT NULL, sha256 text NOT NULL, size bigint NOT NULL,
    chunks integer NOT NULL, ingested_at timestamptz NOT NULL);
CREATE TABLE chunks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id text NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    idx integer NOT NULL, text text NOT NULL, tokens integer NOT NULL,
    embedding vector NOT NULL, UNIQUE (document_id, idx));
"""),
    (2, "ALTER TABLE documents ADD COLUMN recipe text NOT NULL DEFAULT '';"),
)
_INDEX: Final = "chunks_embedding_hnsw"
_DOCUMENT_COLUMNS: Final = "d.id, d.source, d.title, d.media_type, d.sha256, d.size, " \
                           "d.chunks, d.ingested_at, d.recipe"
_NEAREST: Final = f"""
WITH nearest AS (
    SELECT id, document_id, idx, text, tokens, embedding <=> %(q)s AS distance
    FROM chunks {{where}}ORDER BY embedding <=> %(q)s LIMIT %(k)s)
SELECT n.id, n.document_id, n.idx, n.text, n.tokens, {_DOCUMENT_COLUMNS}, 1 - n.distance
FROM nearest n JOIN documents d ON d.id = n.document_id ORDER BY n.distance, n.id
"""  # noqa: S608 (constants only)
_SEARCH: Final = _NEAREST.format(where="")
_SEARCH_IN: Final = _NEAREST.format(where="WHERE document_id = ANY(%(ids)s) ")
# A filtered search goes through the index only where the documents it lets through hold at
# least this share of the chunks, so that an index scan meets k of them early; else it is
# exact over their chunks alone.
_FILTERED_INDEX_SHARE: Final = 0.1
_COPY: Final = ("COPY chunks (document_id, idx, text, tokens, embedding) "
                "FROM STDIN WITH (FORMAT BINARY)")
_EF_SEARCH_MAX: Final = 1000  # pgvector's limit


class PostgresStore:
    """A :class:`~rag_llm.rag.store.DocumentStore` in a PostgreSQL database; thread-safe.

    ``url`` is a libpq URL (``postgresql://user@host:5432/db?sslmode=require``); a password
    may be in it or given as ``password``, and shows in no repr, log or error either way.
    """

    @classmethod
    def from_settings(cls, settings: RagSettings) -> PostgresStore:
        """The ``postgresql://`` entry of :data:`~rag_llm.rag.stores.SCHEMES`."""
        password = settings.store_password
        return cls(settings.store,
                   password=password.get_secret_value() if password is not None else None,
                   pool_min_size=settings.store_pool_min_size,
                   pool_max_size=settings.store_pool_max_size,
                   connect_timeout=settings.store_connect_timeout,
                   ef_search=settings.hnsw_ef_search,
                   exact_below=settings.exact_search_below, m=settings.hnsw_m,
                   ef_construction=settings.hnsw_ef_construction,
                   build_memory_mb=settings.hnsw_build_memory_mb)

    def __init__(self, url: str, *, password: str | None = None, pool_min_size: int = 1,
                 pool_max_size: int = 10, connect_timeout: int = 10, ef_search: int = 100,
                 exact_below: int = 10_000, m: int = 16, ef_construction: int = 64,
                 build_memory_mb: int = 1024) -> None:
        url, in_url = split_password(url)
        self.url = url  # without the password
        secret = password if password is not None else in_url
        try:
            params: dict[str, Any] = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise self._error(f"is not a valid PostgreSQL URL: {_first_line(exc, secret)}",
                              "") from None
        if secret is not None:
            params["password"] = secret
        params.setdefault("connect_timeout", connect_timeout)
        params.setdefault("application_name", "rag-llm")
        self._conninfo = make_conninfo("", **params)
        self._secret = secret
        self.ef_search = min(ef_search, _EF_SEARCH_MAX)
        self.exact_below = exact_below
        self.m, self.ef_construction = int(m), int(ef_construction)
        self.build_memory_mb = int(build_memory_mb)
        self._lock = threading.Lock()
        self._closed = False
        self._migrate(connect_timeout)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self._conninfo, min_size=pool_min_size, max_size=pool_max_size, open=False,
            configure=register_vector, kwargs={"autocommit": True}, name="rag-llm-store")
        try:
            self._pool.open(wait=True, timeout=connect_timeout + 5)
        except PoolTimeout:
            self._pool.close()
            raise self._error("connected once, then no pooled connection opened within "
                              f"{connect_timeout + 5} s", "check the server's "
                              "max_connections and the network") from None
        with self._pool.connection() as conn:
            row = conn.execute("SELECT extversion FROM pg_extension "
                               "WHERE extname = 'vector'").fetchone()
        version = tuple(int(p) for p in str(row[0] if row else "0").split(".") if p.isdigit())
        self._iterative = version >= (0, 8)  # pgvector's iterative index scans

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url!r}>"

    def _error(self, reason: str, fix: str) -> ConfigError:
        return ConfigError("store", self.url, f"{reason}{'; ' + fix if fix else ''}")

    def _migrate(self, connect_timeout: int) -> None:
        """Connect once, create the ``vector`` extension and apply pending migrations."""
        try:
            connection = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise self._error(f"cannot connect: {_first_line(exc, self._secret)}",
                              "check the host, port, user, password and database in the URL "
                              "and that the server is running") from None
        with connection:
            try:
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                       (_LOCK_NAMESPACE, _MIGRATION_LOCK))
                    self._create_extension(connection)
                    connection.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY "
                        "KEY, applied_at timestamptz NOT NULL DEFAULT now())")
                    row = connection.execute(
                        "SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                    current = int(row[0]) if row else 0
                    latest = MIGRATIONS[-1][0]
                    if current > latest:
                        raise self._error(f"the database's schema is version {current}, newer "
                                          f"than this rag-llm's {latest}", "upgrade rag-llm")
                    for version, sql in MIGRATIONS:
                        if version > current:
                            connection.execute(sql.encode())
                            connection.execute("INSERT INTO schema_version(version) "
                                               "VALUES (%s)", (version,))
            except pg_errors.DuplicateTable as exc:
                raise self._error(f"the database already has a table of another program "
                                  f"({_first_line(exc, self._secret)})",
                                  "use another database, or a schema "
                                  "(?options=-csearch_path%3Dname in the URL)") from None
            except psycopg.Error as exc:
                raise self._error(f"cannot be prepared: {_first_line(exc, self._secret)}",
                                  "") from None

    def _create_extension(self, connection: psycopg.Connection[Any]) -> None:
        if connection.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            return
        try:
            with connection.transaction():  # a savepoint: a failure leaves a clear message
                connection.execute("CREATE EXTENSION vector")
        except (pg_errors.UndefinedFile, pg_errors.FeatureNotSupported) as exc:
            raise self._error(f"the server has no pgvector extension "
                              f"({_first_line(exc, self._secret)})",
                              "install pgvector on the server "
                              "(https://github.com/pgvector/pgvector)") from None
        except pg_errors.InsufficientPrivilege:
            info = connection.info
            raise self._error(f"the database {info.dbname!r} lacks the vector extension and "
                              f"user {info.user!r} may not create it",
                              f"run CREATE EXTENSION vector; in {info.dbname!r} as a "
                              "superuser") from None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _model(self) -> tuple[str | None, int | None]:
        self._check_open()
        with self._pool.connection() as conn:
            row = conn.execute("SELECT embedding_model, dimensions FROM rag_store").fetchone()
        return (row[0], row[1]) if row else (None, None)

    @property
    def embedding_model(self) -> str | None:
        return self._model()[0]

    @property
    def dimensions(self) -> int | None:
        return self._model()[1]

    def document(self, document_id: str) -> DocumentRecord | None:
        return self._one_document("d.id = %s", document_id)

    def document_by_source(self, source: str) -> DocumentRecord | None:
        return self._one_document("d.source = %s", source)

    def _one_document(self, where: str, value: str) -> DocumentRecord | None:
        self._check_open()
        with self._pool.connection() as conn:
            row = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents d "  # noqa: S608
                               f"WHERE {where}".encode(), (value,)).fetchone()
        return None if row is None else _document(row)

    def documents(self) -> list[DocumentRecord]:
        self._check_open()
        with self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents d "  # noqa: S608
                                'ORDER BY d.source COLLATE "C"'.encode()).fetchall()
        return [_document(row) for row in rows]

    def chunks(self, document_id: str) -> list[ChunkRecord]:
        self._check_open()
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT id, document_id, idx, text, tokens FROM chunks "
                                "WHERE document_id = %s ORDER BY idx", (document_id,)).fetchall()
        return [ChunkRecord(*row) for row in rows]

    def vectors(self, document_id: str) -> list[list[float]]:
        self._check_open()
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT embedding FROM chunks WHERE document_id = %s "
                                "ORDER BY idx", (document_id,)).fetchall()
        return [row[0].to_list() for row in rows]

    def chunk_count(self) -> int:
        """From the documents' counts (written with their chunks): no scan of ``chunks``."""
        self._check_open()
        with self._pool.connection() as conn:
            row = conn.execute("SELECT coalesce(sum(chunks), 0) FROM documents").fetchone()
        return int(row[0]) if row else 0

    def replace_document(self, document: NewDocument, texts: Sequence[str],
                         tokens: Sequence[int], vectors: Sequence[Sequence[float]],
                         embedding_model: str) -> DocumentRecord:
        matrix = _unit_rows(vectors)
        if not (len(texts) == len(tokens) == matrix.shape[0]):
            raise ValueError(f"{len(texts)} texts, {len(tokens)} token counts and "
                             f"{matrix.shape[0]} vectors: they must match")
        now = datetime.now(UTC).replace(microsecond=0)
        self._check_open()
        with self._pool.connection() as conn:
            rebuild = self._drop_index_for(conn, len(texts))
            try:
                self._write(conn, document, texts, tokens, matrix, embedding_model, now)
            except BaseException:
                if rebuild:  # put back the index dropped for this write, if the link holds
                    with contextlib.suppress(psycopg.Error):
                        self._index_when_large(conn, holding_lock=True)
                raise
            self._index_when_large(conn, holding_lock=rebuild)
        return DocumentRecord(document.id, document.source, document.title,
                              document.media_type, document.sha256, document.size,
                              len(texts), _timestamp(now), document.recipe)

    def _write(self, conn: psycopg.Connection[Any], document: NewDocument,
               texts: Sequence[str], tokens: Sequence[int], matrix: Any,
               embedding_model: str, now: datetime) -> None:
        with conn.transaction():
            # One writer per source at a time: the second replaces the first's version.
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                         (_LOCK_NAMESPACE, document.source))
            self._claim_model(conn, embedding_model, int(matrix.shape[1]))
            conn.execute("DELETE FROM documents WHERE id = %s OR source = %s",
                         (document.id, document.source))
            _insert(conn, [(document, texts, tokens, matrix)], now)

    def replace_all(self, contents: Sequence[DocumentContent], embedding_model: str,
                    expected: Mapping[str, DocumentRecord]) -> bool:
        """See :meth:`DocumentStore.replace_all`. Every writer shares the ``rag_store`` row
        (:meth:`_claim_model`), so holding it alone waits out the writes under way and keeps
        others out. The index is dropped in the transaction (searches wait for its commit)
        and built afresh after it."""
        matrices, dims = _content_rows(contents)
        now = datetime.now(UTC).replace(microsecond=0)
        self._check_open()
        with self._pool.connection() as conn:
            with conn.transaction():
                conn.execute("SELECT 1 FROM rag_store FOR UPDATE")
                current = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents d"  # noqa: S608
                                       .encode()).fetchall()
                if {row[0]: _document(row) for row in current} != dict(expected):
                    return False
                conn.execute(f"DROP INDEX IF EXISTS {_INDEX}".encode())
                conn.execute("TRUNCATE chunks, documents")
                conn.execute(f"ALTER TABLE chunks ALTER COLUMN embedding TYPE vector({dims:d})"
                             .encode())
                conn.execute("UPDATE rag_store SET embedding_model = %s, dimensions = %s",
                             (embedding_model, dims))
                _insert(conn, [(c.document, c.texts, c.tokens, matrix)
                               for c, matrix in zip(contents, matrices, strict=True)], now)
            self._index_when_large(conn, holding_lock=False)
        return True

    def _claim_model(self, conn: psycopg.Connection[Any], model: str, dims: int) -> None:
        """Record the model and dimension, or refuse vectors of another while chunks exist.

        Writers of the recorded model share the ``rag_store`` row; one that changes it holds
        it alone (read first without a lock, so two first writers never both upgrade)."""
        row = conn.execute("SELECT embedding_model, dimensions FROM rag_store").fetchone()
        if row == (model, dims):
            row = conn.execute("SELECT embedding_model, dimensions FROM rag_store "
                               "FOR SHARE").fetchone()
            if row == (model, dims):
                return
        row = conn.execute("SELECT embedding_model, dimensions FROM rag_store "
                           "FOR UPDATE").fetchone()
        stored_model, stored_dims = row if row else (None, None)
        if (stored_model, stored_dims) == (model, dims):
            return
        found = conn.execute("SELECT EXISTS (SELECT 1 FROM chunks)").fetchone()
        if stored_model is not None and found and found[0]:
            raise ConfigError(
                "embedding", model,
                f"differs from {stored_model!r} ({stored_dims} dimensions) that the store at "
                f"{self.url} was built with; an ingest with the new model re-embeds the "
                "whole store first, or use another database (the store URL)")
        if stored_dims != dims:  # the table is empty: the index comes back when it is large
            conn.execute(f"DROP INDEX IF EXISTS {_INDEX}".encode())
            conn.execute(f"ALTER TABLE chunks ALTER COLUMN embedding TYPE vector({dims:d})"
                         .encode())
        conn.execute("UPDATE rag_store SET embedding_model = %s, dimensions = %s",
                     (model, dims))

    def _drop_index_for(self, conn: psycopg.Connection[Any], batch: int) -> bool:
        """Drop the index before a write at least as large as the table and the threshold.

        Such a write is faster COPYed bare and indexed afresh (an HNSW build takes rows at
        several times the rate of inserts into the index), and rebuilding only when a write
        doubles the table costs at most one build per row in all. Meanwhile searches are
        exact. True if dropped: the caller then holds the index lock, to rebuild."""
        if batch < max(self.exact_below, 1) or not self._index_state(conn)[1] \
                or not self._smaller_than(conn, batch + 1):
            return False
        if not self._try_index_lock(conn):
            return False
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}".encode())
        return True

    def _index_when_large(self, conn: psycopg.Connection[Any], *, holding_lock: bool) -> None:
        """Build the HNSW index once the table holds ``exact_below`` chunks, after the write.

        Outside the write's transaction and CONCURRENTLY, so other writers and searches go
        on meanwhile; one builder at a time (a session advisory lock, tried: waiting for it
        while others build is no use). An index left invalid by a killed build is rebuilt.
        """
        try:
            exists, valid = self._index_state(conn)
            if valid or self._smaller_than(conn, self.exact_below, estimate=False):
                return
            if not holding_lock:
                holding_lock = self._try_index_lock(conn)
                if not holding_lock:
                    return
                exists, valid = self._index_state(conn)  # another may just have built it
                if valid:
                    return
            if exists:
                conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}".encode())
            self._build_index(conn)
        finally:
            if holding_lock:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)",
                             (_LOCK_NAMESPACE, _INDEX_LOCK))

    def _build_index(self, conn: psycopg.Connection[Any]) -> None:
        """CREATE INDEX CONCURRENTLY with ``m`` and ``ef_construction``, its graph in memory.

        pgvector builds fast while the graph fits in ``maintenance_work_mem`` and slows
        several-fold past it, so this session raises it to the graph's estimated size (at
        most ``build_memory_mb``; never lowered) for the build."""
        row = conn.execute("SELECT count(*), (SELECT dimensions FROM rag_store), "
                           "current_setting('maintenance_work_mem')::text, "
                           "(SELECT setting::bigint FROM pg_settings "
                           "WHERE name = 'maintenance_work_mem') FROM chunks").fetchone()
        rows, dims, previous, current_kb = row if row else (0, 0, "64MB", 65536)
        graph_kb = int(rows) * (4 * int(dims or 0) + 48 * self.m + 256) * 5 // 4 // 1024
        wanted_kb = min(max(graph_kb, int(current_kb)), self.build_memory_mb * 1024)
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (f"{wanted_kb}kB",))
        try:
            conn.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_INDEX} ON chunks USING "
                         f"hnsw (embedding vector_cosine_ops) WITH (m = {self.m:d}, "
                         f"ef_construction = {self.ef_construction:d})".encode())
        finally:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (previous,))

    @staticmethod
    def _index_state(conn: psycopg.Connection[Any]) -> tuple[bool, bool]:
        """Whether the HNSW index exists, and whether it is valid (usable by searches)."""
        row = conn.execute("SELECT indisvalid AND indisready FROM pg_index "
                           "WHERE indexrelid = to_regclass(%s)", (_INDEX,)).fetchone()
        return (row is not None, bool(row and row[0]))

    @staticmethod
    def _try_index_lock(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                           (_LOCK_NAMESPACE, _INDEX_LOCK)).fetchone()
        return bool(row and row[0])

    def delete_document(self, document_id: str) -> bool:
        self._check_open()
        with self._pool.connection() as conn:
            deleted = conn.execute("DELETE FROM documents WHERE id = %s", (document_id,))
            return deleted.rowcount > 0

    def search(self, vector: Sequence[float], k: int,
               where: SearchFilter | None = None) -> list[SearchHit]:
        query = _unit_rows([vector])[0]
        self._check_open()
        if k < 1:
            return []
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT dimensions FROM rag_store").fetchone()
            dims = row[0] if row else None
            if dims is None:
                return []
            if dims != query.shape[0]:
                raise ConfigError("embedding", f"{query.shape[0]} dimensions",
                                  f"differs from the store's {dims} dimensions")
            if where is None:
                self._plan_search(conn, k)
                rows = conn.execute(_SEARCH, {"q": query, "k": k}).fetchall()
            else:
                rows = self._search_where(conn, query, k, where)
        return [SearchHit(ChunkRecord(*r[:5]), _document(r[5:14]), float(r[14])) for r in rows]

    def _search_where(self, conn: psycopg.Connection[Any], query: Any, k: int,
                      where: SearchFilter) -> list[Any]:
        """Search among the chunks of the documents ``where`` lets through.

        Through the index (pgvector 0.8's iterative scan, in strict order, so filtered-out
        rows do not leave the result short) where those documents hold a large share of the
        chunks; otherwise exact over their chunks, which the document index finds."""
        clauses = ["true"]
        params: dict[str, Any] = {}
        if where.document_ids is not None:
            clauses.append("id = ANY(%(ids)s)")
            params["ids"] = sorted(where.document_ids)
        if where.source_prefix is not None:
            clauses.append("starts_with(source, %(prefix)s)")
            params["prefix"] = where.source_prefix
        found = conn.execute(f"SELECT id, chunks FROM documents WHERE "  # noqa: S608
                             f"{' AND '.join(clauses)}".encode(), params).fetchall()
        if not found:
            return []
        matched = sum(int(row[1]) for row in found)
        exact = not self._iterative or self._plan_search(conn, k) \
            or not self._smaller_than(conn, int(matched / _FILTERED_INDEX_SHARE) + 1)
        if exact:
            conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
        else:
            conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
        return conn.execute(_SEARCH_IN, {"q": query, "k": k,
                                         "ids": [row[0] for row in found]}).fetchall()

    def _plan_search(self, conn: psycopg.Connection[Any], k: int) -> bool:
        """Set this transaction up for exact or HNSW search; True if exact."""
        exact = k > _EF_SEARCH_MAX or self._smaller_than(conn, self.exact_below)
        if exact:
            conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
        else:
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                         (str(max(self.ef_search, k)),))
        return exact

    @staticmethod
    def _smaller_than(conn: psycopg.Connection[Any], threshold: int, *,
                      estimate: bool = True) -> bool:
        """Whether ``chunks`` holds fewer than ``threshold`` rows: by the planner's estimate
        (cheap, for searches), or counted up to ``threshold`` (a few ms, for writes)."""
        if threshold <= 0:
            return False
        row = conn.execute("SELECT reltuples FROM pg_class "
                           "WHERE oid = 'chunks'::regclass").fetchone() if estimate else None
        rows = float(row[0]) if row else -1.0
        if rows < 0:  # never analysed: count, but no further than the threshold
            row = conn.execute("SELECT count(*) FROM (SELECT 1 FROM chunks LIMIT %s) t",
                               (threshold,)).fetchone()
            rows = float(row[0]) if row else 0.0
        return rows < threshold

    def close(self) -> None:
        """Close every pooled connection; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _first_line(exc: BaseException, secret: str | None) -> str:
    """The first line of a driver error, with the password masked should it appear."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(secret, "**********") if secret else text


def _insert(conn: psycopg.Connection[Any],
            documents: Sequence[tuple[NewDocument, Sequence[str], Sequence[int], Any]],
            now: datetime) -> None:
    """Insert each (document, texts, token counts, unit vectors): the documents' rows, then
    every chunk in one binary COPY."""
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO documents VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(d.id, d.source, d.title, d.media_type, d.sha256, d.size, len(texts), now,
              d.recipe) for d, texts, _, _ in documents])
        with cursor.copy(_COPY) as copy:
            copy.set_types(["text", "int4", "text", "int4", "vector"])
            for document, texts, tokens, matrix in documents:
                for i, (text, count, row) in enumerate(zip(texts, tokens, matrix, strict=True)):
                    copy.write_row((document.id, i, text, count, row))


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _document(row: Sequence[Any]) -> DocumentRecord:
    id_, source, title, media_type, sha256, size, chunks, ingested_at, recipe = row
    return DocumentRecord(id_, source, title, media_type, sha256, size, chunks,
                          _timestamp(ingested_at), recipe)

