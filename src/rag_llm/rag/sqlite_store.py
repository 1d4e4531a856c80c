"""The embedded default store: SQLite for documents and chunks, numpy for vector search.

Two files under the data directory: ``rag.sqlite`` holds documents, chunks and metadata;
``vectors.f32`` holds one float32 row per chunk *slot*, memory-mapped for search. Search is
exact (a matrix-vector product over every slot): a median of about 25 ms at 100,000 chunks of
384 dimensions on two cores, against about 100 ms for sqlite-vec's ``vec0``
(``scripts/bench_vector_search.py``), and it needs no SQLite extension loading, which many
Python builds (this one included) lack.

Consistency: SQLite is the source of truth. A write allocates slots that were free before it
began, writes their vectors and syncs the file, then commits the rows that point at them; a
crash at any point leaves no committed chunk without its vector. Slots of deleted chunks go
to a free list (by trigger) and are reused. Other processes' commits are noticed through
``PRAGMA data_version`` before each search.

Several processes may write to one directory at once (the server and the command line): in
WAL mode readers never wait, and a write waits up to ``BUSY_TIMEOUT`` for another's to
commit. A write that fails (a full disk, a lock held too long) is rolled back and raised as
a :class:`~rag_llm.errors.StoreError` naming the directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from rag_llm.errors import ConfigError, StoreError
from rag_llm.rag.store import (
    ChunkRecord,
    DocumentContent,
    DocumentRecord,
    NewDocument,
    SearchFilter,
    SearchHit,
)

if TYPE_CHECKING:
    from rag_llm.rag.settings import RagSettings

__all__ = ["SQLiteStore"]

DATABASE_FILE: Final = "rag.sqlite"
VECTORS_FILE: Final = "vectors.f32"
_ROW_BYTES: Final = 4  # float32
BUSY_TIMEOUT: Final = 30.0  # seconds a write waits for another process's write to finish
# What a write that ran out of space fails with: SQLite's code, or the OS's errno.
_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_LIMIT_SLACK: Final = 1 << 16  # above any one write that hits the limit: a WAL frame, a row

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, source TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
    media_type TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    chunks INTEGER NOT NULL, ingested_at TEXT NOT NULL, recipe TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, document_id TEXT NOT NULL REFERENCES documents(id),
    idx INTEGER NOT NULL, text TEXT NOT NULL, tokens INTEGER NOT NULL,
    slot INTEGER NOT NULL UNIQUE);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id, idx);
CREATE TABLE IF NOT EXISTS free_slots (slot INTEGER PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS chunk_slot_freed AFTER DELETE ON chunks
    BEGIN INSERT INTO free_slots(slot) VALUES (old.slot); END;
"""
_DOCUMENT_COLUMNS: Final = "d.id, d.source, d.title, d.media_type, d.sha256, d.size, " \
                           "d.chunks, d.ingested_at, d.recipe"
_FloatMatrix = npt.NDArray[np.float32]


class SQLiteStore:
    """A :class:`~rag_llm.rag.store.DocumentStore` in one directory; thread-safe."""

    @classmethod
    def from_settings(cls, settings: RagSettings) -> SQLiteStore:
        """The ``sqlite`` entry of :data:`~rag_llm.rag.stores.STORES`: files in ``data_dir``."""
        return cls(settings.data_dir)

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        db: sqlite3.Connection | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Another process (the server and the command line) may hold the write lock
            # for one document's write: wait for it rather than fail.
            db = sqlite3.connect(self.directory / DATABASE_FILE, isolation_level=None,
                                 check_same_thread=False, timeout=BUSY_TIMEOUT)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
            self._add_recipe_column()
            self._fd = os.open(self.directory / VECTORS_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            raise ConfigError("data_dir", str(self.directory),
                              f"cannot hold the store: {exc}") from None
        self._lock = threading.RLock()
        self._closed = False
        self._data_version = -1
        self._stale = True
        self._slots: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._matrix: _FloatMatrix | None = None

    def _add_recipe_column(self) -> None:
        """Stores made before documents kept their recipe gain the column, empty."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(documents)")}
        if "recipe" not in columns:
            self._db.execute("ALTER TABLE documents ADD COLUMN recipe TEXT NOT NULL DEFAULT ''")

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.directory)!r}>"

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                         (key, str(value)))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    @property
    def embedding_model(self) -> str | None:
        with self._lock:
            self._check_open()
            return self._meta("embedding_model")

    @property
    def dimensions(self) -> int | None:
        with self._lock:
            self._check_open()
            value = self._meta("dimensions")
            return None if value is None else int(value)

    def document(self, document_id: str) -> DocumentRecord | None:
        return self._one_document("d.id = ?", document_id)

    def document_by_source(self, source: str) -> DocumentRecord | None:
        return self._one_document("d.source = ?", source)

    def _one_document(self, where: str, value: str) -> DocumentRecord | None:
        with self._lock:
            self._check_open()
            row = self._db.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents d "  # noqa: S608
                                   f"WHERE {where}", (value,)).fetchone()
        return None if row is None else DocumentRecord(*row)

    def documents(self) -> list[DocumentRecord]:
        with self._lock:
            self._check_open()
            rows = self._db.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents d "  # noqa: S608
                                    "ORDER BY d.source").fetchall()
        return [DocumentRecord(*row) for row in rows]

    def chunks(self, document_id: str) -> list[ChunkRecord]:
        with self._lock:
            self._check_open()
            rows = self._db.execute("SELECT id, document_id, idx, text, tokens FROM chunks "
                                    "WHERE document_id = ? ORDER BY idx",
                                    (document_id,)).fetchall()
        return [ChunkRecord(*row) for row in rows]

    def vectors(self, document_id: str) -> list[list[float]]:
        with self._lock:
            self._check_open()
            slots = [row[0] for row in self._db.execute(
                "SELECT slot FROM chunks WHERE document_id = ? ORDER BY idx", (document_id,))]
            matrix, _ = self._refresh()
        if not slots or matrix is None:
            return []
        rows: list[list[float]] = matrix[slots].tolist()
        return rows

    def chunk_count(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def replace_document(self, document: NewDocument, texts: Sequence[str],
                         tokens: Sequence[int], vectors: Sequence[Sequence[float]],
                         embedding_model: str) -> DocumentRecord:
        matrix = _unit_rows(vectors)
        if not (len(texts) == len(tokens) == matrix.shape[0]):
            raise ValueError(f"{len(texts)} texts, {len(tokens)} token counts and "
                             f"{matrix.shape[0]} vectors: they must match")
        ingested_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            self._check_open()
            with self._transaction(f"cannot store {document.source!r}"):
                self._claim_model(embedding_model, int(matrix.shape[1]))
                slots = self._allocate(len(texts))  # free before this write: see module doc
                self._write_vectors(slots, matrix)
                freed = self._slots_of(document.id)
                self._delete(document.id)
                self._insert(document, texts, tokens, slots, ingested_at)
                added = self._db.execute("SELECT slot, id FROM chunks WHERE document_id = ?",
                                         (document.id,)).fetchall()
            self._apply(freed, added)
        return DocumentRecord(document.id, document.source, document.title,
                              document.media_type, document.sha256, document.size,
                              len(texts), ingested_at, document.recipe)

    def replace_all(self, contents: Sequence[DocumentContent], embedding_model: str,
                    expected: Mapping[str, DocumentRecord]) -> bool:
        """See :meth:`DocumentStore.replace_all`. The new vectors are written past every
        old row (in the new rows' size) before the commit, so a crash at any point leaves
        the old content whole; the old rows' space becomes free slots."""
        matrices, dims = _content_rows(contents)
        ingested_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            self._check_open()
            with self._transaction("cannot re-embed the store"):
                current = self._db.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents d"  # noqa: S608
                                           ).fetchall()
                if {row[0]: DocumentRecord(*row) for row in current} != dict(expected):
                    return False
                old_bytes = int(self._meta("next_slot") or 0) * int(self._meta("dimensions") or 0)
                start = -(-old_bytes // dims) if dims else 0  # the first row past the old ones
                rows = sum(m.shape[0] for m in matrices)
                if rows:
                    block = np.concatenate(matrices)
                    os.pwrite(self._fd, block.tobytes(), start * dims * _ROW_BYTES)
                    os.fsync(self._fd)
                self._db.execute("DELETE FROM chunks")
                self._db.execute("DELETE FROM documents")
                self._db.execute("DELETE FROM free_slots")  # they counted rows of the old size
                self._db.executemany("INSERT INTO free_slots(slot) VALUES (?)",
                                     ((slot,) for slot in range(start)))
                self._set_meta("next_slot", start + rows)
                self._set_meta("embedding_model", embedding_model)
                self._set_meta("dimensions", dims)
                slot = start
                for content in contents:
                    rows = len(content.texts)
                    self._insert(content.document, content.texts, content.tokens,
                                 range(slot, slot + rows), ingested_at)
                    slot += rows
            self._stale = True  # the next search reloads the map and the matrix
        return True

    def _insert(self, document: NewDocument, texts: Sequence[str], tokens: Sequence[int],
                slots: Sequence[int], ingested_at: str) -> None:
        """Insert ``document``'s row and its chunks' rows, chunk i in ``slots[i]``."""
        self._db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (document.id, document.source, document.title, document.media_type,
                          document.sha256, document.size, len(texts), ingested_at,
                          document.recipe))
        self._db.executemany(
            "INSERT INTO chunks(document_id, idx, text, tokens, slot) VALUES (?, ?, ?, ?, ?)",
            [(document.id, i, text, count, slot)
             for i, (text, count, slot) in enumerate(zip(texts, tokens, slots, strict=True))])

    def _claim_model(self, model: str, dims: int) -> None:
        stored_model, stored_dims = self._meta("embedding_model"), self._meta("dimensions")
        empty = self._db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is None
        if stored_model is not None and not empty and (stored_model, stored_dims) != (
                model, str(dims)):
            raise ConfigError(
                "embedding", model,
                f"differs from {stored_model!r} ({stored_dims} dimensions) that the store in "
                f"{self.directory} was built with; an ingest with the new model re-embeds "
                "the whole store first, or use another data_dir (RAG_LLM_DATA_DIR)")
        if empty and stored_dims not in (None, str(dims)):
            # Rows of the new size are written from slot 0 over the old ones. The file is
            # not truncated: a rollback then leaves it as long as the old rows need, and a
            # reader in another process never has its mapped pages cut from under it.
            self._db.execute("DELETE FROM free_slots")
            self._set_meta("next_slot", 0)
            self._stale = True
        self._set_meta("embedding_model", model)
        self._set_meta("dimensions", dims)

    def _allocate(self, count: int) -> list[int]:
        slots = [row[0] for row in self._db.execute(
            "SELECT slot FROM free_slots ORDER BY slot LIMIT ?", (count,))]
        self._db.executemany("DELETE FROM free_slots WHERE slot = ?", [(s,) for s in slots])
        start = int(self._meta("next_slot") or 0)
        fresh = count - len(slots)
        self._set_meta("next_slot", start + fresh)
        return slots + list(range(start, start + fresh))

    def _write_vectors(self, slots: Sequence[int], matrix: _FloatMatrix) -> None:
        row_bytes = matrix.shape[1] * _ROW_BYTES
        for slot, row in zip(slots, matrix, strict=True):
            os.pwrite(self._fd, row.tobytes(), slot * row_bytes)
        os.fsync(self._fd)

    def _slots_of(self, document_id: str) -> list[int]:
        return [row[0] for row in self._db.execute(
            "SELECT slot FROM chunks WHERE document_id = ?", (document_id,))]

    def _delete(self, document_id: str) -> bool:
        self._db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
        return self._db.execute("DELETE FROM documents WHERE id = ?",
                                (document_id,)).rowcount > 0

    def delete_document(self, document_id: str) -> bool:
        with self._lock:
            self._check_open()
            with self._transaction(f"cannot delete document {document_id!r}"):
                freed = self._slots_of(document_id)
                deleted = self._delete(document_id)
            self._apply(freed, [])
        return deleted

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[None]:
        """One write, committed whole or rolled back; SQLite's and the OS's failures come out
        as a :class:`~rag_llm.errors.StoreError` that says ``action`` and why."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._stale = True
                # A failed COMMIT (a full disk) may have rolled back already.
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise self._store_error(action, exc) from exc

    def _store_error(self, action: str, exc: sqlite3.Error | OSError) -> StoreError:
        where = f"the store in {self.directory}"
        code = str(getattr(exc, "sqlite_errorname", ""))
        full = code == "SQLITE_FULL" or getattr(exc, "errno", None) in _FULL_ERRNOS
        limit = self._size_limit_reached() if full or code.startswith("SQLITE_IOERR") else None
        if full or limit is not None:
            why = f"{exc}" if limit is None else f"{exc}: a file reached the process's size " \
                                                 f"limit, RLIMIT_FSIZE={limit} bytes"
            return StoreError(str(self.directory), f"{action}: {where} is out of space ({why}); "
                              "what was stored before is kept: free some space or move "
                              "data_dir (RAG_LLM_DATA_DIR), then ingest again", full=True)
        if code == "SQLITE_BUSY":
            return StoreError(str(self.directory), f"{action}: {where} stayed locked by "
                              f"another process's write for {BUSY_TIMEOUT:g} s ({exc})")
        return StoreError(str(self.directory), f"{action}: {where} failed to write: {exc}")

    def _size_limit_reached(self) -> int | None:
        """The file size limit (``ulimit -f``) if one of the store's files is within a page
        of it: SQLite reports that as an I/O error, not as a full disk."""
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft == resource.RLIM_INFINITY:
            return None
        for name in (DATABASE_FILE, f"{DATABASE_FILE}-wal", VECTORS_FILE):
            with contextlib.suppress(OSError):
                if (self.directory / name).stat().st_size + _LIMIT_SLACK >= soft:
                    return soft
        return None

    def _apply(self, freed: list[int], added: list[tuple[int, int]]) -> None:
        """Update the slot map after this connection's own commit (which ``data_version``
        does not show); a new array, so searches holding the old one are unaffected."""
        if self._stale:
            return  # the next search reloads everything anyway
        total = int(self._meta("next_slot") or 0)
        slots = np.full(total, -1, dtype=np.int64)
        slots[:len(self._slots)] = self._slots[:total]
        slots[freed] = -1
        for slot, chunk_id in added:
            slots[slot] = chunk_id
        self._slots = slots
        if self._matrix is None or self._matrix.shape[0] != total:
            self._matrix = self._open_matrix(total)

    def _refresh(self) -> tuple[_FloatMatrix | None, npt.NDArray[np.int64]]:
        """The vector matrix and slot -> chunk id map (-1: free), reloaded when changed."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if self._stale or version != self._data_version:
            self._data_version, self._stale = version, False
            total = int(self._meta("next_slot") or 0)
            slots = np.full(total, -1, dtype=np.int64)
            rows = np.array(self._db.execute("SELECT slot, id FROM chunks").fetchall(),
                            dtype=np.int64).reshape(-1, 2)
            slots[rows[:, 0]] = rows[:, 1]
            self._slots = slots
            self._matrix = self._open_matrix(total)
        return self._matrix, self._slots

    def _open_matrix(self, total: int) -> _FloatMatrix | None:
        dims = int(self._meta("dimensions") or 0)
        if not total or not dims:
            return None
        return np.memmap(self.directory / VECTORS_FILE, dtype=np.float32, mode="r",
                         shape=(total, dims))

    def search(self, vector: Sequence[float], k: int,
               where: SearchFilter | None = None) -> list[SearchHit]:
        query = _unit_rows([vector])[0]
        with self._lock:
            self._check_open()
            matrix, slots = self._refresh()
            allowed = None if where is None or matrix is None else self._slots_where(where)
        if matrix is None or k < 1:
            return []
        if matrix.shape[1] != query.shape[0]:
            raise ConfigError("embedding", f"{query.shape[0]} dimensions",
                              f"differs from the store's {matrix.shape[1]} dimensions")
        # Outside the lock: a concurrent write may reuse a freed slot; its chunk id is then
        # gone from the table and the hit is dropped below.
        if allowed is None:
            scores = np.asarray(matrix @ query)
            scores[slots < 0] = -np.inf
            live = int(np.count_nonzero(slots >= 0))
        else:  # only the filtered rows are scored
            allowed = allowed[allowed < len(slots)]
            allowed = allowed[slots[allowed] >= 0]
            scores, live = np.asarray(matrix[allowed] @ query), len(allowed)
        k = min(k, live)
        if k == 0:
            return []
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        picked = best if allowed is None else allowed[best]
        return self._hits([(int(slots[p]), float(scores[b])) for p, b in zip(picked, best,
                                                                             strict=True)])

    def _slots_where(self, where: SearchFilter) -> npt.NDArray[np.int64]:
        """The slots of the chunks of the documents ``where`` lets through, ascending."""
        clauses: list[str] = ["1"]
        params: list[object] = []
        if where.document_ids is not None:
            ids = sorted(where.document_ids)
            clauses.append(f"c.document_id IN ({','.join('?' * len(ids))})")
            params += ids
        if where.source_prefix is not None:
            clauses.append("substr(d.source, 1, ?) = ?")
            params += [len(where.source_prefix), where.source_prefix]
        rows = self._db.execute(
            "SELECT c.slot FROM chunks c JOIN documents d ON d.id = c.document_id "  # noqa: S608
            f"WHERE {' AND '.join(clauses)} ORDER BY c.slot", params).fetchall()
        return np.array([row[0] for row in rows], dtype=np.int64)

    def _hits(self, ranked: list[tuple[int, float]]) -> list[SearchHit]:
        ids = [chunk_id for chunk_id, _ in ranked]
        marks = ",".join("?" * len(ids))
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT c.id, c.document_id, c.idx, c.text, c.tokens, {_DOCUMENT_COLUMNS} "  # noqa: S608
                f"FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
                ids).fetchall()
        found: dict[int, Any] = {row[0]: row for row in rows}
        return [SearchHit(ChunkRecord(*found[cid][:5]), DocumentRecord(*found[cid][5:]), score)
                for cid, score in ranked if cid in found]

    def close(self) -> None:
        """Close the database and the vector file; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._matrix = None
            self._db.close()
            os.close(self._fd)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _unit_rows(vectors: Sequence[Sequence[float]] | _FloatMatrix) -> _FloatMatrix:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or (matrix.shape[0] and matrix.shape[1] == 0):
        raise ValueError(f"vectors must be a non-ragged 2-D sequence, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: _FloatMatrix = matrix / norms
    return result


def _content_rows(contents: Sequence[DocumentContent]) -> tuple[list[_FloatMatrix], int]:
    """Each content's vectors as unit rows, checked against its texts, and their size."""
    matrices = [_unit_rows(c.vectors) for c in contents]
    for content, matrix in zip(contents, matrices, strict=True):
        if not (len(content.texts) == len(content.tokens) == matrix.shape[0]):
            raise ValueError(f"{content.document.source}: texts, token counts and vectors "
                             "must match")
    return matrices, next((int(m.shape[1]) for m in matrices if m.shape[0]), 0)
