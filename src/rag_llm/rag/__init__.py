"""The RAG service: ingest -> chunk -> embed -> store -> retrieve -> answer.

Needs the ``rag`` extra (numpy, pypdf); offline embeddings need the ``local`` extra too.

>>> from rag_llm.locator import ServiceLocator
>>> from rag_llm.rag import RagService, RagSettings, resolve_settings
>>> service = RagService.from_locator(ServiceLocator(resolve_settings(Settings.load())),
...                                   RagSettings.load())  # doctest: +SKIP
>>> await service.ingest_paths(["samples/corpus"])  # doctest: +SKIP
>>> (await service.query("How do I rotate the API keys?")).citations[0].source  # doctest: +SKIP
"""

from __future__ import annotations

from rag_llm.rag.answer import Answer, AnswerEvent, Citation
from rag_llm.rag.chunking import Chunk, Chunker, approximate_tokens
from rag_llm.rag.defaults import resolve_settings
from rag_llm.rag.ingest import IngestedDocument, IngestFailure, Ingestor, IngestReport
from rag_llm.rag.loaders import DocumentError, LoadedDocument, load_bytes
from rag_llm.rag.service import RagService
from rag_llm.rag.settings import RagSettings
from rag_llm.rag.sqlite_store import SQLiteStore
from rag_llm.rag.store import (
    ChunkRecord,
    DocumentContent,
    DocumentRecord,
    DocumentStore,
    NewDocument,
    SearchFilter,
    SearchHit,
)

__all__ = [
    "Answer",
    "AnswerEvent",
    "Chunk",
    "ChunkRecord",
    "Chunker",
    "Citation",
    "DocumentContent",
    "DocumentError",
    "DocumentRecord",
    "DocumentStore",
    "IngestFailure",
    "IngestReport",
    "IngestedDocument",
    "Ingestor",
    "LoadedDocument",
    "NewDocument",
    "RagService",
    "RagSettings",
    "SQLiteStore",
    "SearchFilter",
    "SearchHit",
    "approximate_tokens",
    "load_bytes",
    "resolve_settings",
]
