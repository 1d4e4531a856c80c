"""The storage interface of the RAG service and the records that cross it.

:class:`DocumentStore` is the plug point: the embedded default is
:class:`~rag_llm.rag.sqlite_store.SQLiteStore`; a server-grade store (Postgres with pgvector,
Qdrant, ...) implements the same methods. Vectors cross the interface as plain sequences of
floats, unit length; scores are cosine similarities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    # Rows of floats; a float32 matrix takes a quarter of a list's memory.
    Vectors: TypeAlias = "Sequence[Sequence[float]] | npt.NDArray[np.float32]"

__all__ = ["ChunkRecord", "DocumentContent", "DocumentRecord", "DocumentStore", "NewDocument",
           "SearchFilter", "SearchHit"]


@dataclass(frozen=True, slots=True)
class NewDocument:
    """A document about to be stored: identity, content hash and descriptive metadata.

    ``recipe`` names how its chunks were cut (loader, chunk size and overlap, token
    counter): a later ingest of the same content re-cuts it when the recipe has changed.
    """

    id: str
    source: str
    title: str
    media_type: str
    sha256: str
    size: int
    recipe: str = ""


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """A stored document."""

    id: str
    source: str
    title: str
    media_type: str
    sha256: str
    size: int
    chunks: int
    ingested_at: str
    recipe: str = ""  # empty for documents stored before stores kept recipes


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A stored chunk of a document."""

    id: int
    document_id: str
    index: int
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class DocumentContent:
    """A document with all of its chunks and their vectors, as :meth:`replace_all` takes."""

    document: NewDocument
    texts: Sequence[str]
    tokens: Sequence[int]
    vectors: Vectors


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Which documents a search may return: one of ``document_ids``, and/or one whose source
    starts with ``source_prefix`` (both given, a document must pass both). An empty
    ``document_ids`` lets none through."""

    document_ids: frozenset[str] | None = None
    source_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.document_ids is not None and not isinstance(self.document_ids, frozenset):
            object.__setattr__(self, "document_ids", frozenset(self.document_ids))

    @classmethod
    def of(cls, document_ids: Iterable[str] | None,
           source_prefix: str | None) -> SearchFilter | None:
        """The filter of a request's optional fields; ``None`` when neither is given."""
        if document_ids is None and source_prefix is None:
            return None
        return cls(None if document_ids is None else frozenset(document_ids), source_prefix)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A chunk found by vector search, with its document and its cosine ``score``."""

    chunk: ChunkRecord
    document: DocumentRecord
    score: float


class DocumentStore(Protocol):
    """Documents, their chunks and the chunks' vectors, with top-k search.

    Implementations are safe to call from several threads; the RAG service calls them off
    the event loop.
    """

    @property
    def embedding_model(self) -> str | None:
        """The embedding model the stored vectors came from; ``None`` while empty."""
        ...

    @property
    def dimensions(self) -> int | None:
        """The stored vectors' dimension; ``None`` while empty."""
        ...

    def document(self, document_id: str) -> DocumentRecord | None: ...

    def document_by_source(self, source: str) -> DocumentRecord | None: ...

    def documents(self) -> list[DocumentRecord]: ...

    def chunks(self, document_id: str) -> list[ChunkRecord]: ...

    def vectors(self, document_id: str) -> list[list[float]]:
        """The vectors of a document's chunks, in chunk order (as :meth:`chunks`)."""
        ...

    def replace_document(self, document: NewDocument, texts: Sequence[str],
                         tokens: Sequence[int], vectors: Sequence[Sequence[float]],
                         embedding_model: str) -> DocumentRecord:
        """Store ``document`` with its chunks, replacing any earlier version, atomically."""
        ...

    def replace_all(self, contents: Sequence[DocumentContent], embedding_model: str,
                    expected: Mapping[str, DocumentRecord]) -> bool:
        """Replace every stored document with ``contents``, their vectors from
        ``embedding_model``, in one transaction: how a store changes embedding model.

        Only if the stored documents are still ``expected`` (by id): False, with nothing
        changed, when another writer got in first. Searches meanwhile see the old content.
        """
        ...

    def delete_document(self, document_id: str) -> bool:
        """Remove a document and its chunks; False if there was none."""
        ...

    def search(self, vector: Sequence[float], k: int,
               where: SearchFilter | None = None) -> list[SearchHit]:
        """The ``k`` chunks closest to ``vector``, best first; only those of the documents
        ``where`` lets through, when given."""
        ...

    def chunk_count(self) -> int: ...

    def close(self) -> None: ...
