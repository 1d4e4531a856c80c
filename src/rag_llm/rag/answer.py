"""Answers from retrieved chunks: the prompt with numbered sources, citations, extractive mode.

With a chat model, the prompt lists the retrieved chunks as numbered sources and asks for
an answer that cites them as ``[n]``. Without one the answer is extractive: the best
passages, quoted and cited, with a first line that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from rag_llm.rag.store import SearchHit

__all__ = [
    "EXTRACTIVE_NOTE",
    "NO_SOURCES",
    "SYSTEM_PROMPT",
    "Answer",
    "AnswerEvent",
    "Citation",
    "build_messages",
    "citations_of",
    "extractive_answer",
]

Mode = Literal["generated", "extractive", "no_sources"]

SYSTEM_PROMPT: Final = (
    "You answer questions using only the numbered sources the user gives you. Cite every "
    "claim with the number of its source in square brackets, like [1] or [2][3]. If the "
    "sources do not contain the answer, say that you cannot find it in the documents."
)
EXTRACTIVE_NOTE: Final = (
    "No chat model is configured, so this answer is extractive: the passages below are "
    "quoted from the best-matching sources, not written by a model."
)
NO_SOURCES: Final = (
    "No documents are stored yet, so there is nothing to answer from. Ingest some first "
    "(rag-llm ingest PATH, or POST /v1/documents)."
)
_EXTRACTIVE_PASSAGES: Final = 3
_PASSAGE_CHARS: Final = 800
# Passages scoring below this share of the best one are left out of an extractive answer.
_RELATIVE_SCORE: Final = 0.6


@dataclass(frozen=True, slots=True)
class Citation:
    """Source ``number`` of an answer: which chunk of which document, and how well it matched."""

    number: int
    document_id: str
    source: str
    title: str
    chunk_id: int
    chunk_index: int
    score: float
    text: str


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer with the sources it was built from; ``mode`` says how it was made."""

    question: str
    answer: str
    mode: Mode
    citations: tuple[Citation, ...]


@dataclass(frozen=True, slots=True)
class AnswerEvent:
    """One step of a streamed answer: ``citations`` first, then ``delta``s, then ``done``."""

    kind: Literal["citations", "delta", "done"]
    data: Any


def citations_of(hits: Sequence[SearchHit]) -> tuple[Citation, ...]:
    """The hits as citations numbered from 1, best first."""
    return tuple(
        Citation(number=n, document_id=hit.document.id, source=hit.document.source,
                 title=hit.document.title, chunk_id=hit.chunk.id, chunk_index=hit.chunk.index,
                 score=round(hit.score, 6), text=hit.chunk.text)
        for n, hit in enumerate(hits, start=1)
    )


def build_messages(question: str, citations: Sequence[Citation]) -> list[dict[str, str]]:
    """Chat messages: the instructions, then the numbered sources and the question."""
    sources = "\n\n".join(f"[{c.number}] {c.title} ({c.source})\n{c.text}" for c in citations)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"},
    ]


def extractive_answer(citations: Sequence[Citation]) -> str:
    """The best passages, quoted with their source numbers, under a note that says so."""
    if not citations:
        return NO_SOURCES
    passages: list[str] = []
    floor = citations[0].score * _RELATIVE_SCORE
    for citation in citations[:_EXTRACTIVE_PASSAGES]:
        if passages and citation.score < floor:
            break
        text = citation.text
        if len(text) > _PASSAGE_CHARS:
            text = text[:_PASSAGE_CHARS].rsplit(" ", 1)[0] + " ..."
        passages.append(f"[{citation.number}] {text}")
    return "\n\n".join([EXTRACTIVE_NOTE, *passages])
