"""``RagService``: the RAG service's operations, shared by the command line and the HTTP API.

It owns the store and borrows the providers: the embedding and chat providers belong to a
:class:`~rag_llm.locator.ServiceLocator`, which closes them; ``close()`` closes only the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rag_llm.errors import ConfigError
from rag_llm.locator import ServiceLocator
from rag_llm.observability.work import WORK
from rag_llm.providers import ChatModel, Embedder
from rag_llm.rag import defaults
from rag_llm.rag.answer import (
    Answer,
    AnswerEvent,
    Citation,
    Mode,
    build_messages,
    citations_of,
    extractive_answer,
)
from rag_llm.rag.chunking import Chunker, approximate_tokens
from rag_llm.rag.ingest import Ingestor, IngestReport, Progress
from rag_llm.rag.recorded import RecordedEmbedder
from rag_llm.rag.settings import RagSettings
from rag_llm.rag.store import DocumentRecord, DocumentStore, SearchFilter
from rag_llm.rag.stores import open_store

__all__ = ["RagService", "embedding_model_of"]


def embedding_model_of(embedder: Embedder) -> str:
    """``type/model`` of an embedder: what the store records its vectors came from."""
    config = getattr(embedder, "config", None)
    kind = getattr(config, "type", None) or embedder.name
    model = getattr(config, "model", None) or getattr(embedder, "model", None) or "?"
    return f"{kind}/{model}"


def _concurrency(embedder: Embedder, configured: int) -> int:
    """Batches in flight: the configured bound, never above what the provider can serve."""
    limit = getattr(embedder, "max_concurrency", None) or getattr(embedder, "max_connections",
                                                                   None)
    return max(1, min(configured, int(limit))) if isinstance(limit, int) else configured


class RagService:
    """Ingest, list, delete and query documents with one embedder, chat model and store."""

    def __init__(self, settings: RagSettings, embedder: Embedder, chat: ChatModel | None,
                 store: DocumentStore) -> None:
        self.settings = settings
        self.embedder = embedder
        self.chat = chat
        self.store = store
        self.embedding_model = embedding_model_of(embedder)
        # Every embedder call is counted, for /metrics and the dashboard.
        self._embedder = RecordedEmbedder(embedder, self.embedding_model)
        count = getattr(embedder, "count_tokens", None)
        chunker = Chunker(settings.chunk_size, settings.chunk_overlap,
                          count if callable(count) else approximate_tokens)
        self._ingestor = Ingestor(store, self._embedder, chunker,
                                  embedding_model=self.embedding_model,
                                  batch_size=settings.embed_batch_size,
                                  concurrency=_concurrency(embedder, settings.embed_concurrency),
                                  max_bytes=settings.max_upload_bytes,
                                  dimensions=getattr(getattr(embedder, "config", None),
                                                     "dimensions", None))
        self._count_corpus()

    @classmethod
    def from_locator(cls, locator: ServiceLocator, settings: RagSettings,
                     environ: Mapping[str, str] | None = None) -> RagService:
        """The service over ``locator``'s providers (defaults filled in) and the store
        ``settings.store`` names (SQLite by default)."""
        embedder = defaults.embedder(locator, environ)
        chat = defaults.chat_model(locator, environ)
        return cls(settings, embedder, chat, open_store(settings))

    def __repr__(self) -> str:
        chat = self.chat.name if self.chat is not None else None
        return (f"<RagService store={self.store!r} embedding={self.embedding_model!r} "
                f"chat={chat!r}>")

    @property
    def mode(self) -> str:
        """``generated`` with a chat model, ``extractive`` without."""
        return "generated" if self.chat is not None else "extractive"

    def _count_corpus(self) -> None:
        WORK.corpus(len(self.store.documents()), self.store.chunk_count())

    def _check_model(self) -> None:
        stored = self.store.embedding_model
        if stored is not None and stored != self.embedding_model and self.store.chunk_count():
            raise ConfigError(
                "embedding", self.embedding_model,
                f"differs from {stored!r} that the stored vectors came from; the next "
                "ingest (rag-llm ingest, or POST /v1/documents) re-embeds the stored "
                "chunks with it, or use another data_dir (RAG_LLM_DATA_DIR)")

    async def ingest_paths(self, paths: Iterable[str | Path], progress: Progress | None = None,
                           on_total: Callable[[int], None] | None = None) -> IngestReport:
        """Ingest files and folders; see :class:`~rag_llm.rag.ingest.Ingestor` (with a
        new embedding model, it first re-embeds the whole store)."""
        try:
            return await self._ingestor.ingest_paths(paths, progress, on_total)
        finally:
            await asyncio.to_thread(self._count_corpus)

    async def ingest_files(self, files: Sequence[tuple[str, bytes]]) -> IngestReport:
        """Ingest uploaded (name, content) pairs."""
        try:
            return await self._ingestor.ingest_files(files)
        finally:
            await asyncio.to_thread(self._count_corpus)

    async def documents(self) -> list[DocumentRecord]:
        return await asyncio.to_thread(self.store.documents)

    async def document(self, document_id: str) -> DocumentRecord | None:
        return await asyncio.to_thread(self.store.document, document_id)

    async def delete(self, document_id: str) -> bool:
        """Remove a document and its chunks; False if there was none."""
        deleted = await asyncio.to_thread(self.store.delete_document, document_id)
        await asyncio.to_thread(self._count_corpus)
        return deleted

    async def retrieve(self, question: str, top_k: int | None = None,
                       where: SearchFilter | None = None) -> tuple[Citation, ...]:
        """The ``top_k`` chunks closest to ``question``, as numbered citations; only from
        the documents ``where`` lets through, when given."""
        await asyncio.to_thread(self._check_model)
        k = top_k or self.settings.top_k
        if not await asyncio.to_thread(self.store.chunk_count):
            return ()
        vector = (await self._embedder.aembed([question]))[0]
        hits = await asyncio.to_thread(self.store.search, vector, k, where)
        return citations_of(hits)

    async def query(self, question: str, top_k: int | None = None,
                    where: SearchFilter | None = None) -> Answer:
        """Retrieve, then answer with the chat model, or extractively without one."""
        started = time.perf_counter()
        citations = await self.retrieve(question, top_k, where)
        retrieved = time.perf_counter()
        if not citations or self.chat is None:
            mode: Mode = "no_sources" if not citations else "extractive"
            text = extractive_answer(citations)
        else:
            text = await self.chat.achat(build_messages(question, citations))
            mode = "generated"
        WORK.queried(mode, retrieved - started, time.perf_counter() - retrieved)
        return Answer(question, text, mode, citations)

    async def stream(self, question: str, top_k: int | None = None,
                     where: SearchFilter | None = None) -> AsyncIterator[AnswerEvent]:
        """:meth:`query` as events: the citations, the answer's text deltas, then done."""
        started = time.perf_counter()
        citations = await self.retrieve(question, top_k, where)
        retrieved = time.perf_counter()
        yield AnswerEvent("citations", [asdict(c) for c in citations])
        if not citations or self.chat is None:
            yield AnswerEvent("delta", extractive_answer(citations))
            mode = "no_sources" if not citations else "extractive"
        else:
            async for delta in self.chat.astream(build_messages(question, citations)):
                yield AnswerEvent("delta", delta)
            mode = "generated"
        WORK.queried(mode, retrieved - started, time.perf_counter() - retrieved)
        yield AnswerEvent("done", {"mode": mode})

    def status(self) -> dict[str, Any]:
        """What the service runs with: for health reports and the command line."""
        documents, chunks = len(self.store.documents()), self.store.chunk_count()
        WORK.corpus(documents, chunks)
        return {"embedding": self.embedding_model,
                "chat": getattr(self.chat, "name", None), "mode": self.mode,
                "documents": documents, "chunks": chunks}

    def close(self) -> None:
        """Close the store; the providers belong to the locator."""
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
