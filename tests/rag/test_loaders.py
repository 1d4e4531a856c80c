"""Loaders: text, Markdown, HTML and PDF to plain text; bad files are named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
from ragkit import make_pdf

from rag_llm.rag.loaders import DocumentError, discover, load_bytes, read_file


def test_plain_text_is_decoded_and_titled_by_its_first_line() -> None:
    document = load_bytes("notes.txt", "Café notes\n\nSecond paragraph.".encode())
    assert (document.title, document.media_type) == ("Café notes", "text/plain")
    assert document.text == "Café notes\n\nSecond paragraph."


def test_markdown_keeps_text_and_drops_link_targets_images_and_comments() -> None:
    source = b"# Guide\n\nSee [the docs](https://x.test/a) <!-- hidden -->![logo](l.png)now."
    document = load_bytes("guide.md", source)
    assert document.title == "Guide"
    assert document.text == "# Guide\n\nSee the docs now."


def test_html_keeps_visible_text_in_paragraphs_and_headings() -> None:
    source = (b"<html><head><title>Page</title><style>p{}</style></head><body>"
              b"<script>var secret = 1;</script><h2>Part</h2><p>One &amp; two.</p>"
              b"<div>Three <b>four</b>.</div></body></html>")
    document = load_bytes("page.html", source)
    assert document.title == "Page"
    assert document.text == "## Part\n\nOne & two.\n\nThree four."


def test_pdf_text_is_extracted_page_by_page() -> None:
    data = make_pdf([["First page line."], ["Second page line."]], title="Report")
    document = load_bytes("report.pdf", data)
    assert (document.title, document.media_type) == ("Report", "application/pdf")
    assert document.text == "First page line.\n\nSecond page line."


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("broken.pdf", b"%PDF-1.4\nthis is not really a pdf", "is not a readable PDF"),
    ("empty.pdf", make_pdf([[]]), "no extractable text"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00", "is binary"),
    ("blank.md", b"  \n\n ", "is empty"),
    ("sheet.xlsx", b"PK", "unsupported type '.xlsx'"),
])
def test_a_bad_file_raises_an_error_naming_it(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason) as caught:
        load_bytes(name, data)
    assert caught.value.source == name
    assert str(caught.value).startswith(f"{name}: ")


def test_read_file_names_a_missing_or_oversized_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="cannot be read"):
        read_file(tmp_path / "missing.txt", 100)
    big = tmp_path / "big.txt"
    big.write_text("x" * 101)
    with pytest.raises(DocumentError, match="over the limit of 100"):
        read_file(big, 100)


def test_discover_walks_folders_for_supported_files_and_reports_bad_paths(
    tmp_path: Path,
) -> None:
    for name in ["a.md", "sub/b.txt", "sub/c.pdf", "skip.png", ".hidden/d.md", "sub/.e.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = list(discover([tmp_path, tmp_path / "nope", tmp_path / "skip.png"]))
    files = [f for f in found if isinstance(f, Path)]
    errors = [f for f in found if isinstance(f, DocumentError)]
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.md", "sub/b.txt",
                                                                   "sub/c.pdf"]
    assert [(Path(e.source).name, e.reason) for e in errors] == [
        ("nope", "does not exist"),
        ("skip.png", "has an unsupported type '.png'; supported: .htm, .html, .markdown, "
                     ".md, .pdf, .text, .txt"),
    ]
