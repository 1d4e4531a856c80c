"""Turn files into plain text: plain text, Markdown, HTML and PDF, chosen by file suffix.

Loaders work on bytes, so a file read from disk and one uploaded over HTTP take the same path.
A file that cannot be read or parsed raises :class:`DocumentError`, naming the file.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePath
from typing import Final

from rag_llm.errors import RagLLMError

__all__ = ["LOADERS", "LOADERS_VERSION", "DocumentError", "LoadedDocument", "discover",
           "load_bytes", "read_file"]

# Raised whenever a loader's text extraction changes, so stored documents are re-cut.
LOADERS_VERSION: Final = 1


class DocumentError(RagLLMError, ValueError):
    """A document could not be read or parsed; ``source`` names it."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    """The text of one document and what it came from."""

    source: str
    title: str
    media_type: str
    text: str


def _decode(source: str, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentError(source, "is binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _first_line_title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        stripped = line.strip().lstrip("#").strip()
        if stripped:
            return stripped[:200]
    return fallback


def _load_text(source: str, data: bytes) -> tuple[str, str]:
    text = _decode(source, data)
    return _first_line_title(text, PurePath(source).name), text


_MD_NOISE: Final = re.compile(r"<!--.*?-->|!\[[^\]]*\]\([^)]*\)", re.S)
_MD_LINK: Final = re.compile(r"\[([^\]]+)\]\([^)]*\)")


def _load_markdown(source: str, data: bytes) -> tuple[str, str]:
    text = _MD_LINK.sub(r"\1", _MD_NOISE.sub("", _decode(source, data)))
    return _first_line_title(text, PurePath(source).name), text


class _HTMLText(HTMLParser):
    """Collects visible text; block elements become paragraph breaks."""

    _SKIP: Final = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    _BLOCK: Final = frozenset({
        "p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "li",
        "ul", "ol", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote",
        "br", "hr", "dd", "dt", "figcaption",
    })

    _HEADINGS: Final = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
            if tag in self._HEADINGS:  # kept as Markdown, so chunks keep headings with text
                self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self.parts.append(data)


def _load_html(source: str, data: bytes) -> tuple[str, str]:
    parser = _HTMLText()
    parser.feed(_decode(source, data))
    parser.close()
    paragraphs = (" ".join(p.split()) for p in "".join(parser.parts).split("\n\n"))
    text = "\n\n".join(p for p in paragraphs if p)
    title = " ".join(parser.title.split()) or _first_line_title(text, PurePath(source).name)
    return title, text


def _load_pdf(source: str, data: bytes) -> tuple[str, str]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise DocumentError(source, "reading PDF needs the rag extra: "
                                    "pip install 'rag-llm[rag]'") from None
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
        metadata = reader.metadata
        title = str(metadata.get("/Title") or "").strip() if metadata is not None else ""
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise DocumentError(source, f"is not a readable PDF ({type(exc).__name__})") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise DocumentError(source, "has no extractable text (a scanned PDF needs OCR first)")
    return title or _first_line_title(text, PurePath(source).name), text


Loader = Callable[[str, bytes], tuple[str, str]]
# suffix -> (media type, loader)
LOADERS: Final[Mapping[str, tuple[str, Loader]]] = {
    ".txt": ("text/plain", _load_text),
    ".text": ("text/plain", _load_text),
    ".md": ("text/markdown", _load_markdown),
    ".markdown": ("text/markdown", _load_markdown),
    ".html": ("text/html", _load_html),
    ".htm": ("text/html", _load_html),
    ".pdf": ("application/pdf", _load_pdf),
}


def load_bytes(source: str, data: bytes) -> LoadedDocument:
    """Parse ``data``, the content of the file named ``source``, by its suffix."""
    suffix = PurePath(source).suffix.lower()
    entry = LOADERS.get(suffix)
    if entry is None:
        raise DocumentError(source, f"has an unsupported type {suffix or '(no suffix)'!r}; "
                                    f"supported: {', '.join(sorted(LOADERS))}")
    media_type, loader = entry
    title, text = loader(source, data)
    if not text.strip():
        raise DocumentError(source, "is empty")
    return LoadedDocument(source=source, title=title, media_type=media_type, text=text)


def read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``; a missing, unreadable or oversized file raises DocumentError."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(str(path), f"is {size} bytes, over the limit of {max_bytes}")
        return path.read_bytes()
    except OSError as exc:
        raise DocumentError(str(path), f"cannot be read: {exc.strerror or exc}") from None


def discover(paths: Iterable[str | Path]) -> Iterator[Path | DocumentError]:
    """Files to ingest under ``paths``: named files as given, folders searched recursively.

    Inside folders only supported suffixes are taken and hidden entries are skipped; a named
    path that does not exist or has an unsupported suffix is yielded as a DocumentError.
    """
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path).parts
                if any(part.startswith(".") for part in relative):
                    continue
                if found.suffix.lower() in LOADERS and not found.is_dir():
                    yield found
        elif path.suffix.lower() in LOADERS:
            yield path  # read_file reports a missing or unreadable one
        elif not path.exists() and not path.is_symlink():
            yield DocumentError(str(path), "does not exist")
        else:
            yield DocumentError(str(path), f"has an unsupported type {path.suffix!r}; "
                                           f"supported: {', '.join(sorted(LOADERS))}")
