"""Request and response bodies of the HTTP API, validated strictly: wrong types are 422s."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from rag_llm.rag.store import SearchFilter

__all__ = [
    "MAX_QUESTION_CHARS",
    "MAX_TOP_K",
    "CitationOut",
    "DocumentOut",
    "ErrorOut",
    "FailureOut",
    "FieldErrorOut",
    "IngestOut",
    "IngestedOut",
    "QueryIn",
    "QueryOut",
    "StatusOut",
    "ValidationErrorOut",
]

MAX_QUESTION_CHARS: Final = 4000
MAX_TOP_K: Final = 50
MAX_FILTER_DOCUMENTS: Final = 1000


class QueryIn(BaseModel):
    """A question to answer from the stored documents."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"question": "How long should sourdough proof in the fridge?", "top_k": 5}],
    })

    question: StrictStr = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: StrictInt | None = Field(default=None, ge=1, le=MAX_TOP_K,
                                    description="chunks to retrieve; the service default if unset")
    stream: StrictBool = Field(default=False,
                               description="answer as server-sent events: citations, "
                                           "delta..., done")
    documents: list[StrictStr] | None = Field(
        default=None, max_length=MAX_FILTER_DOCUMENTS,
        description="search only these documents (ids, as GET /v1/documents lists them)")
    source_prefix: StrictStr | None = Field(
        default=None, max_length=MAX_QUESTION_CHARS,
        description="search only documents whose source starts with this")

    def where(self) -> SearchFilter | None:
        """The search filter the request asks for, if any."""
        return SearchFilter.of(self.documents, self.source_prefix)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class CitationOut(BaseModel):
    """Source ``number`` of an answer: a chunk of a document and its cosine similarity."""

    number: int
    document_id: str
    source: str
    title: str
    chunk_id: int
    chunk_index: int
    score: float
    text: str


class QueryOut(BaseModel):
    """An answer with its numbered sources; ``mode`` says how it was made."""

    question: str
    answer: str
    mode: Literal["generated", "extractive", "no_sources"]
    citations: list[CitationOut]


class DocumentOut(BaseModel):
    """A stored document."""

    id: str
    source: str
    title: str
    media_type: str
    sha256: str
    size: int
    chunks: int
    ingested_at: str


class IngestedOut(BaseModel):
    """A document an ingestion stored (``added``, ``updated``) or left as it was."""

    id: str
    source: str
    title: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int


class FailureOut(BaseModel):
    """A file an ingestion could not store, by name, and why."""

    source: str
    error: str


class IngestOut(BaseModel):
    """What an ingestion did with each file."""

    documents: list[IngestedOut]
    failures: list[FailureOut]
    reembedded: int = Field(0, description="stored chunks embedded again because the "
                                           "embedding model changed")


class StatusOut(BaseModel):
    """The providers and store the service runs with."""

    embedding: str
    chat: str | None
    mode: Literal["generated", "extractive"]
    documents: int
    chunks: int


class ErrorOut(BaseModel):
    """An error: ``detail`` says what went wrong."""

    detail: str


class FieldErrorOut(BaseModel):
    """One invalid field: where it is and what is wrong with it."""

    field: str
    message: str


class ValidationErrorOut(BaseModel):
    """A 422: every invalid field of the request."""

    detail: str
    errors: list[FieldErrorOut]
