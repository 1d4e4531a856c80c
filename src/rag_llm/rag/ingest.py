"""Ingestion: read, chunk, embed concurrently and store documents; report each by name.

A run has two phases. First every file is read, hashed and chunked in a worker thread; one
whose content hash and recipe (loaders, chunk size and overlap, token counter) match the
stored version is skipped, and one that cannot be read or parsed is reported and left out.
Then the chunks are embedded in batches, several batches in flight at once (bounded by
``concurrency``), and each document is stored, replacing its earlier version, as soon as its
group of batches is done, so memory stays bounded however many files a run takes. Each
document is stored in one transaction: a run that is killed, or whose store fails (a
:class:`~rag_llm.errors.StoreError`, which ends the run), leaves every document whole or
absent, and the next run stores the rest.

A store holds one embedding model's vectors, so a run with another model than the store's
re-embeds the whole store before it stores anything: every stored chunk from its stored
text (documents this run re-cuts are embedded once, as cut now), then one transaction
replaces the store's content (:meth:`~rag_llm.rag.store.DocumentStore.replace_all`).
Until then the store is as it was; a run that fails or is killed changes nothing. A
document another process writes meanwhile is noticed there and embedded again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np

from rag_llm.errors import RagLLMError, StoreError
from rag_llm.providers import Embedder
from rag_llm.rag.chunking import Chunk, Chunker
from rag_llm.rag.loaders import LOADERS_VERSION, DocumentError, discover, load_bytes, read_file
from rag_llm.rag.store import DocumentContent, DocumentRecord, DocumentStore, NewDocument

__all__ = ["IngestFailure", "IngestReport", "IngestedDocument", "Ingestor", "document_id"]

Progress = Callable[[int], None]
Status = Literal["added", "updated", "unchanged"]
# Batches per group: how far embedding runs ahead of storing.
_GROUP_BATCHES: Final = 4
# Tries of a change of model's swap, each after another writer changed the store.
_SWAP_TRIES: Final = 3


def document_id(source: str) -> str:
    """The stable id of the document named ``source``: it survives re-ingestion."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class IngestedDocument:
    """A document the run stored or found unchanged."""

    id: str
    source: str
    title: str
    status: Status
    chunks: int


@dataclass(frozen=True, slots=True)
class IngestFailure:
    """A document the run could not store, and why."""

    source: str
    error: str


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one ingestion run did, document by document."""

    documents: tuple[IngestedDocument, ...] = ()
    failures: tuple[IngestFailure, ...] = ()
    # Stored chunks embedded again because the store's embedding model changed.
    reembedded: int = 0

    def count(self, status: Status) -> int:
        return sum(1 for d in self.documents if d.status == status)

    @property
    def chunks_stored(self) -> int:
        return sum(d.chunks for d in self.documents if d.status != "unchanged")


@dataclass(slots=True)
class _Prepared:
    document: NewDocument
    chunks: list[Chunk]
    replaces: bool
    vectors: list[list[float]] = field(default_factory=list)
    error: str | None = None


class Ingestor:
    """Runs ingestion into ``store`` with ``embedder``; vectors are tagged ``embedding_model``."""

    def __init__(self, store: DocumentStore, embedder: Embedder, chunker: Chunker, *,
                 embedding_model: str, batch_size: int, concurrency: int,
                 max_bytes: int, dimensions: int | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.embedding_model = embedding_model
        self.dimensions = dimensions  # the embedder's, where configured
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self.max_bytes = max_bytes
        self.recipe = f"loaders={LOADERS_VERSION} {chunker.recipe}"

    async def ingest_paths(self, paths: Iterable[str | Path],
                           progress: Progress | None = None,
                           on_total: Callable[[int], None] | None = None) -> IngestReport:
        """Ingest files and folders (searched recursively for supported files)."""
        items: list[tuple[str, Path | bytes]] = []
        failures: list[IngestFailure] = []
        for found in await asyncio.to_thread(lambda: list(discover(paths))):
            if isinstance(found, DocumentError):
                failures.append(IngestFailure(found.source, found.reason))
            else:
                items.append((str(found), found))
        return await self._run(items, failures, progress, on_total)

    async def ingest_files(self, files: Sequence[tuple[str, bytes]],
                           progress: Progress | None = None) -> IngestReport:
        """Ingest in-memory files, each a (name, content) pair; the name picks the format."""
        return await self._run(list(files), [], progress, None)

    async def _run(self, items: list[tuple[str, Path | bytes]], failures: list[IngestFailure],
                   progress: Progress | None,
                   on_total: Callable[[int], None] | None) -> IngestReport:
        done: list[IngestedDocument] = []
        pending: list[_Prepared] = []
        seen: set[str] = set()
        for source, content in items:
            if source in seen:
                continue
            seen.add(source)
            try:
                prepared = await asyncio.to_thread(self._prepare, source, content)
            except DocumentError as exc:
                failures.append(IngestFailure(source, exc.reason))
                continue
            if isinstance(prepared, IngestedDocument):
                done.append(prepared)
            else:
                pending.append(prepared)
        if await asyncio.to_thread(self._model_changes):
            return await self._switch_model(done, pending, failures, progress, on_total)
        if on_total is not None:
            on_total(sum(len(p.chunks) for p in pending))
        for group in self._groups(pending):
            await self._embed(group, progress)
            for prepared in group:
                outcome = await self._store(prepared)
                if isinstance(outcome, IngestedDocument):
                    done.append(outcome)
                else:
                    failures.append(outcome)
        return IngestReport(tuple(done), tuple(failures))

    def _model_changes(self) -> bool:
        """Whether the store holds vectors of another model, or of another configured size."""
        stored, dims = self.store.embedding_model, self.store.dimensions
        other = (stored is not None and stored != self.embedding_model) or (
            self.dimensions is not None and dims is not None and dims != self.dimensions)
        return other and self.store.chunk_count() > 0

    async def _switch_model(self, done: list[IngestedDocument], pending: list[_Prepared],
                            failures: list[IngestFailure], progress: Progress | None,
                            on_total: Callable[[int], None] | None) -> IngestReport:
        """Re-embed the whole store with this run's model and swap it in (module doc)."""
        fresh = {prepared.document.id for prepared in pending}
        again: dict[str, tuple[DocumentRecord, DocumentContent]] = {}  # stored, re-embedded
        stored = await asyncio.to_thread(self.store.documents)
        if on_total is not None:  # a later try's documents add to the bar's progress only
            on_total(sum(len(p.chunks) for p in pending)
                     + sum(d.chunks for d in stored if d.id not in fresh))
        new = await self._contents(pending, progress)
        for _ in range(_SWAP_TRIES):
            changed = [d for d in stored if d.id not in fresh and again.get(d.id, (None,))[0] != d]
            prepared = [await asyncio.to_thread(self._from_store, d) for d in changed]
            for record, content in zip(changed, await self._contents(prepared, progress),
                                       strict=True):
                again[record.id] = (record, content)
            kept = [again[d.id][1] for d in stored if d.id not in fresh]
            if await asyncio.to_thread(self.store.replace_all, [*kept, *new],
                                       self.embedding_model, {d.id: d for d in stored}):
                break
            stored = await asyncio.to_thread(self.store.documents)
        else:
            raise StoreError(repr(self.store), f"re-embedding the store with "
                             f"{self.embedding_model!r}: other writers changed it during each "
                             f"of {_SWAP_TRIES} tries; the store is unchanged: ingest again")
        done += [IngestedDocument(p.document.id, p.document.source, p.document.title,
                                  "updated" if p.replaces else "added", len(p.chunks))
                 for p in pending]
        return IngestReport(tuple(done), tuple(failures),
                            reembedded=sum(len(c.texts) for c in kept))

    async def _contents(self, prepared: list[_Prepared],
                        progress: Progress | None) -> list[DocumentContent]:
        """``prepared`` embedded, group by group, each vector kept as float32 (a quarter of
        a list's memory); any failure ends the change of model, before anything changed."""
        contents: list[DocumentContent] = []
        for group in self._groups(prepared):
            await self._embed(group, progress)
            for p in group:
                if p.error is not None:
                    raise RagLLMError(f"re-embedding the store with {self.embedding_model!r} "
                                      f"failed at {p.document.source!r}: {p.error}; the "
                                      "store is unchanged")
                contents.append(DocumentContent(
                    p.document, [c.text for c in p.chunks], [c.tokens for c in p.chunks],
                    np.asarray(p.vectors, dtype=np.float32)))
                p.vectors = []
        return contents

    def _from_store(self, record: DocumentRecord) -> _Prepared:
        """A stored document as it is, to embed again (in a worker thread)."""
        chunks = [Chunk(c.index, c.text, c.tokens) for c in self.store.chunks(record.id)]
        document = NewDocument(record.id, record.source, record.title, record.media_type,
                               record.sha256, record.size, record.recipe)
        return _Prepared(document, chunks, replaces=True)

    def _prepare(self, source: str, content: Path | bytes) -> _Prepared | IngestedDocument:
        """Read, hash and chunk one file (in a worker thread)."""
        data = read_file(content, self.max_bytes) if isinstance(content, Path) else content
        if len(data) > self.max_bytes:
            raise DocumentError(source, f"is {len(data)} bytes, over the limit of "
                                        f"{self.max_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        stored = self.store.document_by_source(source)
        if stored is not None and stored.sha256 == digest and stored.recipe == self.recipe:
            return IngestedDocument(stored.id, source, stored.title, "unchanged", stored.chunks)
        loaded = load_bytes(source, data)
        chunks = self.chunker.split(loaded.text)
        if not chunks:
            raise DocumentError(source, "has no text to index")
        document = NewDocument(id=document_id(source), source=source, title=loaded.title,
                               media_type=loaded.media_type, sha256=digest, size=len(data),
                               recipe=self.recipe)
        return _Prepared(document, chunks, replaces=stored is not None)

    def _groups(self, pending: list[_Prepared]) -> Iterable[list[_Prepared]]:
        limit = self.batch_size * self.concurrency * _GROUP_BATCHES
        group: list[_Prepared] = []
        size = 0
        for prepared in pending:
            group.append(prepared)
            size += len(prepared.chunks)
            if size >= limit:
                yield group
                group, size = [], 0
        if group:
            yield group

    async def _embed(self, group: list[_Prepared], progress: Progress | None) -> None:
        """Embed every chunk of ``group``, ``concurrency`` batches in flight at most."""
        texts = [(prepared, chunk.text) for prepared in group for chunk in prepared.chunks]
        batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        vectors: list[list[list[float]] | None] = [None] * len(batches)
        slots = asyncio.Semaphore(self.concurrency)

        async def embed(number: int) -> None:
            batch = batches[number]
            async with slots:
                try:
                    vectors[number] = await self.embedder.aembed([text for _, text in batch])
                except RagLLMError as exc:
                    for prepared, _ in batch:
                        prepared.error = f"embedding failed: {exc}"
            if progress is not None:
                progress(len(batch))

        await asyncio.gather(*(embed(n) for n in range(len(batches))))
        for batch, batch_vectors in zip(batches, vectors, strict=True):
            if batch_vectors is not None:
                for (prepared, _), vector in zip(batch, batch_vectors, strict=True):
                    prepared.vectors.append(vector)

    async def _store(self, prepared: _Prepared) -> IngestedDocument | IngestFailure:
        source = prepared.document.source
        if prepared.error is not None:
            return IngestFailure(source, prepared.error)
        try:
            record = await asyncio.to_thread(
                self.store.replace_document, prepared.document,
                [c.text for c in prepared.chunks], [c.tokens for c in prepared.chunks],
                prepared.vectors, self.embedding_model)
        except StoreError:
            raise  # the store, not this document, failed: the documents after it would too
        except RagLLMError as exc:
            return IngestFailure(source, str(exc))
        status: Status = "updated" if prepared.replaces else "added"
        return IngestedDocument(record.id, source, record.title, status, record.chunks)
