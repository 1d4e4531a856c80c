"""Split text into token-bounded chunks that end at paragraph or sentence boundaries.

Paragraphs (blank-line separated) are split into sentences; sentences are packed into
chunks of at most ``size`` tokens. A paragraph that would not fit in what is left of a chunk
but fits in a fresh one starts that fresh chunk, so paragraphs stay whole where they can.
Each new chunk repeats the last whole sentences of the previous one, up to ``overlap``
tokens. Only a sentence longer than ``size`` is cut, between words.

>>> Chunker(size=10, overlap=0).split("One two three. Four five six.\\n\\nSeven eight.")
[Chunk(index=0, text='One two three. Four five six.', tokens=8), \
Chunk(index=1, text='Seven eight.', tokens=3)]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["Chunk", "Chunker", "TokenCounter", "approximate_tokens"]

TokenCounter = Callable[[str], int]

_TOKEN: Final = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_PARAGRAPH: Final = re.compile(r"\n\s*\n")
# A sentence ends at . ! or ? (maybe then a closing quote or bracket) followed by space.
_SENTENCE_END: Final = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
# A line that starts a list item, heading, quote or table row keeps its own line.
_OWN_LINE: Final = re.compile(r"\s*(?:[-*+#>|]|\d+[.)])\s")


def approximate_tokens(text: str) -> int:
    """Words and punctuation marks: close to, and rarely above, a subword tokenizer's count."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document: its position, text and token count."""

    index: int
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    tokens: int
    paragraph: int
    line_start: bool


class Chunker:
    """Token-aware splitter; ``count`` measures tokens (the embedder's tokenizer, if any)."""

    def __init__(self, size: int, overlap: int, count: TokenCounter = approximate_tokens) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 <= overlap < size:
            raise ValueError(f"overlap must be >= 0 and < size={size}, got {overlap}")
        self.size = size
        self.overlap = overlap
        self.count = count

    @property
    def recipe(self) -> str:
        """The settings that decide where chunks fall: stored with each document so that a
        change of any of them re-cuts it at the next ingest."""
        counter = "approximate" if self.count is approximate_tokens else "tokenizer"
        return f"chunk_size={self.size} chunk_overlap={self.overlap} tokens={counter}"

    def split(self, text: str) -> list[Chunk]:
        """The chunks of ``text``, in order; none for blank text."""
        paragraphs = _attach_headings([_tidy(p) for p in _PARAGRAPH.split(text)])
        chunks: list[list[_Unit]] = []
        current: list[_Unit] = []
        for number, paragraph in enumerate(p for p in paragraphs if p):
            units = self._units(paragraph, number)
            whole = sum(u.tokens for u in units)
            used = self._tokens(current)
            # Start the paragraph afresh if it fits whole there and this chunk is half full.
            if used >= self.size // 2 and used + whole > self.size and whole <= self.size:
                chunks.append(current)
                current = self._carry(current, room_for=whole)
            for unit in units:
                if current and self._tokens(current) + unit.tokens > self.size:
                    chunks.append(current)
                    current = self._carry(current, room_for=unit.tokens)
                current.append(unit)
        if current and (not chunks or current[-1] is not chunks[-1][-1]):
            chunks.append(current)  # unless all it holds is the overlap already emitted
        return [Chunk(index=i, text=_join(units), tokens=self._tokens(units))
                for i, units in enumerate(chunks)]

    def _tokens(self, units: list[_Unit]) -> int:
        return sum(u.tokens for u in units)

    def _carry(self, previous: list[_Unit], room_for: int) -> list[_Unit]:
        """The trailing whole sentences of ``previous`` that fit in ``overlap`` tokens and
        leave ``room_for`` tokens free in the next chunk."""
        budget = min(self.overlap, self.size - room_for)
        carried: list[_Unit] = []
        total = 0
        for unit in reversed(previous):
            if total + unit.tokens > budget:
                break
            carried.insert(0, unit)
            total += unit.tokens
        return carried

    def _units(self, paragraph: str, number: int) -> list[_Unit]:
        units: list[_Unit] = []
        for line in paragraph.split("\n"):
            line_start = True
            for sentence in _SENTENCE_END.split(line):
                sentence = sentence.strip()
                if not sentence:
                    continue
                tokens = self.count(sentence)
                pieces = [sentence] if tokens <= self.size else self._cut(sentence)
                for piece in pieces:
                    count = tokens if len(pieces) == 1 else self.count(piece)
                    units.append(_Unit(piece, count, number, line_start))
                    line_start = False
        return units

    def _cut(self, sentence: str) -> list[str]:
        """Cut an over-long sentence between words into pieces of at most ``size`` tokens."""
        pieces: list[str] = []
        words: list[str] = []
        used = 0
        for word in sentence.split():
            tokens = self.count(word)  # near-additive across words; keeps this linear
            if words and used + tokens > self.size:
                pieces.append(" ".join(words))
                words, used = [], 0
            words.append(word)
            used += tokens
        if words:
            pieces.append(" ".join(words))
        return pieces


def _tidy(paragraph: str) -> str:
    """Whitespace collapsed; soft-wrapped lines joined, list items and headings kept apart."""
    joined: list[str] = []
    for line in paragraph.strip().splitlines():
        if not line.strip():
            continue
        text = " ".join(line.split())
        if joined and not _OWN_LINE.match(line):
            joined[-1] += " " + text
        else:
            joined.append(text)
    return "\n".join(joined)


def _attach_headings(paragraphs: list[str]) -> list[str]:
    """Paragraphs, each heading joined to the paragraph after it: a chunk never ends in one."""
    attached: list[str] = []
    heading = ""
    for paragraph in paragraphs:
        if not paragraph:
            continue
        if all(line.startswith("#") for line in paragraph.splitlines()):
            heading = f"{heading}\n{paragraph}" if heading else paragraph
            continue
        attached.append(f"{heading}\n{paragraph}" if heading else paragraph)
        heading = ""
    if heading:
        attached.append(heading)
    return attached


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    for previous, unit in zip([None, *units], units, strict=False):
        if previous is not None:
            if previous.paragraph != unit.paragraph:
                parts.append("\n\n")
            else:
                parts.append("\n" if unit.line_start else " ")
        parts.append(unit.text)
    return "".join(parts)
