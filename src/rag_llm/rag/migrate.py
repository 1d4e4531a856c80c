"""Copying one store into another: an embedded store into PostgreSQL, say.

Documents go across one at a time, each with its chunks and vectors in the target's own
atomic replace, so an interrupted copy leaves whole documents only. A document the target
already holds with the same content, recipe and chunk count is skipped: running the copy
again resumes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rag_llm.errors import ConfigError
from rag_llm.rag.store import DocumentRecord, DocumentStore, NewDocument

__all__ = ["CopyReport", "copy_store"]


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What a copy did: documents copied and skipped (already there), chunks copied."""

    copied: int = 0
    skipped: int = 0
    chunks: int = 0


def _same(held: DocumentRecord | None, document: DocumentRecord) -> bool:
    return held is not None and (held.sha256, held.recipe, held.chunks) == (
        document.sha256, document.recipe, document.chunks)


def copy_store(source: DocumentStore, target: DocumentStore,
               progress: Callable[[DocumentRecord], None] | None = None) -> CopyReport:
    """Copy every document of ``source`` into ``target``, skipping those already there.

    The target must be empty or hold vectors of the source's embedding model.
    """
    model = source.embedding_model
    documents = source.documents()
    if model is None or not documents:
        return CopyReport()
    held_model = target.embedding_model
    if held_model is not None and held_model != model and target.chunk_count():
        raise ConfigError("to", held_model, f"holds vectors of another model than the "
                                            f"source's {model!r}; copy into an empty store")
    copied = skipped = chunks = 0
    for document in documents:
        if _same(target.document(document.id), document):
            skipped += 1
        else:
            stored = source.chunks(document.id)
            target.replace_document(
                NewDocument(id=document.id, source=document.source, title=document.title,
                            media_type=document.media_type, sha256=document.sha256,
                            size=document.size, recipe=document.recipe),
                [c.text for c in stored], [c.tokens for c in stored],
                source.vectors(document.id), model)
            copied += 1
            chunks += len(stored)
        if progress is not None:
            progress(document)
    return CopyReport(copied, skipped, chunks)
