"""What the store's crash scenarios share: a deterministic in-process embedder, a generated
corpus in two versions, the child that ingests until it is killed, and the census that
checks every document is whole or absent.

The child runs in a process forked from a multiprocessing forkserver that has imported this
module (and rag_llm with it) once: each of many children starts in milliseconds, and none
is forked from the test process, whose threads (servers, executors) a fork would copy in
whatever state they were in.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from rag_llm.rag import RagService, RagSettings
from rag_llm.rag.ingest import document_id
from rag_llm.rag.sqlite_store import DATABASE_FILE, VECTORS_FILE, SQLiteStore

DIMS = 16
DOCUMENTS = 30
SETTINGS = {"chunk_size": 40, "chunk_overlap": 8, "embed_batch_size": 16,
            "embed_concurrency": 2}
# The child records (documents stored, inside a document's write) here, with one pwrite
# each: a SIGKILL never leaves it half written.
_PROGRESS = struct.Struct("<ii")


class HashEmbedder:
    """Unit vectors from SHAKE-256 of each text: deterministic, no network, no model."""

    name = "hash"
    model = f"shake256-{DIMS}"

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        items = [texts] if isinstance(texts, str) else list(texts)
        return [vector(text).tolist() for text in items]

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
        await asyncio.sleep(0)  # a batch is a suspension point, as over the network
        return self.embed(texts)

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None


def vector(text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    raw = np.frombuffer(hashlib.shake_256(text.encode()).digest(2 * DIMS), dtype="<u2")
    values = raw.astype(np.float32) / 32767.5 - 1.0
    return values / np.linalg.norm(values)


def write_corpus(folder: Path, version: str) -> None:
    """``DOCUMENTS`` Markdown files of 2 to 13 paragraphs; each version words them apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(DOCUMENTS):
        paragraphs = [f"Paragraph {p} of note {n}, version {version}. " +
                      " ".join(f"word{(n * 31 + p * 7 + w) % 97}" for w in range(30)) + "."
                      for p in range(2 + n % 12)]
        (folder / f"note-{n:02d}.md").write_text(f"# Note {n}\n\n" + "\n\n".join(paragraphs))


def service(data_dir: Path) -> RagService:
    settings = RagSettings(data_dir=data_dir, **SETTINGS)
    return RagService(settings, HashEmbedder(), None, SQLiteStore(data_dir))


def ingest(data_dir: Path, corpus: Path) -> None:
    with service(data_dir) as rag:
        report = asyncio.run(rag.ingest_paths([corpus]))
    assert not report.failures, report.failures


def ingest_until_killed(data_dir: Path, corpus: Path, ready: Connection,
                        progress: Path) -> None:
    """The child: open the store, ingest ``corpus``, say when the first document's write
    begins; the parent kills it at a random point after that."""
    fd = os.open(progress, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, _PROGRESS.pack(0, 0), 0)
    rag = service(data_dir)
    replace = rag.store.replace_document
    stored = 0

    def recorded(*args: Any) -> Any:
        nonlocal stored
        if not stored:
            ready.send_bytes(b"writing")
        os.pwrite(fd, _PROGRESS.pack(stored, 1), 0)
        record = replace(*args)
        stored += 1
        os.pwrite(fd, _PROGRESS.pack(stored, 0), 0)
        return record

    rag.store.replace_document = recorded  # type: ignore[method-assign]
    asyncio.run(rag.ingest_paths([corpus]))
    rag.close()


def same_documents(data_dir: Path, reference: Path) -> None:
    """Both stores hold the same documents: metadata, chunks and vectors."""
    with SQLiteStore(data_dir) as got, SQLiteStore(reference) as want:
        def shown(doc: Any) -> tuple[Any, ...]:
            return (doc.id, doc.source, doc.title, doc.media_type, doc.sha256, doc.size,
                    doc.chunks, doc.recipe)

        assert [shown(d) for d in got.documents()] == [shown(d) for d in want.documents()]
        for doc in want.documents():
            chunks = [(c.index, c.text, c.tokens) for c in got.chunks(doc.id)]
            assert chunks
            assert chunks == [(c.index, c.text, c.tokens) for c in want.chunks(doc.id)]
            assert np.allclose(got.vectors(doc.id), want.vectors(doc.id), atol=1e-6)
        assert got.chunk_count() == want.chunk_count()


def progress_of(path: Path) -> tuple[int, bool]:
    """(documents the child stored, whether it was inside a document's write)."""
    stored, inside = _PROGRESS.unpack(path.read_bytes()[:_PROGRESS.size])
    return stored, bool(inside)


@dataclass(frozen=True)
class Version:
    """One document as a clean ingest of corpus version ``label`` stores it."""

    label: str
    title: str
    chunks: tuple[tuple[int, str, int], ...]
    vectors: np.ndarray[Any, np.dtype[np.float32]]


def versions_in(data_dir: Path, label: str) -> dict[str, dict[str, Version]]:
    """source -> {sha256: Version} of every document a clean store of ``label`` holds."""
    found: dict[str, dict[str, Version]] = {}
    with SQLiteStore(data_dir) as store:
        for doc in store.documents():
            chunks = tuple((c.index, c.text, c.tokens) for c in store.chunks(doc.id))
            found[doc.source] = {doc.sha256: Version(label, doc.title, chunks,
                                                     np.array(store.vectors(doc.id)))}
    return found


def census(data_dir: Path, expected: dict[str, dict[str, Version]]) -> dict[str, int]:
    """Reopen the store and check each expected document is absent or exactly one of its
    versions (metadata, every chunk, each chunk's vector); count them by version."""
    counts: dict[str, int] = {"absent": 0}
    check_files(data_dir)
    with SQLiteStore(data_dir) as store:
        stored = {doc.source: doc for doc in store.documents()}
        assert set(stored) <= set(expected), set(stored) - set(expected)
        chunks = 0
        for source, known in expected.items():
            doc = stored.get(source)
            if doc is None:
                assert store.chunks(document_id(source)) == [], source
                counts["absent"] += 1
                continue
            want = known[doc.sha256]  # a KeyError: metadata of no version
            got = tuple((c.index, c.text, c.tokens) for c in store.chunks(doc.id))
            assert (doc.title, doc.chunks, got) == (want.title, len(want.chunks),
                                                    want.chunks), source
            assert np.allclose(np.array(store.vectors(doc.id)), want.vectors, atol=1e-6), source
            counts[want.label] = counts.get(want.label, 0) + 1
            chunks += doc.chunks
        assert store.chunk_count() == chunks  # no chunk outlived its document
    return counts


def check_files(data_dir: Path, dims: int = DIMS) -> None:
    """SQLite's own check, and the slot map: no live slot free, none past the vectors."""
    with sqlite3.connect(f"file:{data_dir / DATABASE_FILE}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM chunks JOIN free_slots USING (slot)"
                          ).fetchone() == (0,)
        row = db.execute("SELECT value FROM meta WHERE key = 'next_slot'").fetchone()
        next_slot = int(row[0]) if row else 0
        top = db.execute("SELECT max(slot) FROM chunks").fetchone()[0]
        assert top is None or top < next_slot
    db.close()
    assert (data_dir / VECTORS_FILE).stat().st_size >= next_slot * dims * 4
