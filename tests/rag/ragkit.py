"""Helpers of the RAG tests: the sample corpus, upstream-backed settings, PDFs made here."""

from __future__ import annotations

from pathlib import Path

from support import provider_config

from rag_llm.config import Settings
from rag_llm.testing import UpstreamServer

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"
SAMPLE_NAMES = ("connection-pooling.md", "espresso.txt", "honeybees.html",
                "marathon-training.pdf", "sourdough-bread.md", "tide-pools.md", "volcanoes.html")


def upstream_settings(server: UpstreamServer, *, chat: bool = True, **limits: int) -> Settings:
    """Embedding (and chat) providers pointed at the loopback upstream."""
    providers = {"embedding": provider_config(server, **limits)}
    if chat:
        providers["llm"] = provider_config(server, model="gpt-4o-mini", **limits)
    return Settings(providers=providers)


def make_pdf(pages: list[list[str]], title: str = "") -> bytes:
    """A minimal valid PDF: one Helvetica text page per list of lines."""
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()]
    for page_id, lines in zip(page_ids, pages, strict=True):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
                       f"<< /Font << /F1 {font_id} 0 R >> >> /Contents {page_id + 1} 0 R >>"
                       .encode())
        text = " ".join(f"({line}) Tj T*" for line in lines)
        stream = f"BT /F1 11 Tf 14 TL 72 740 Td {text} ET".encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, len(objects), xref)
    return bytes(out)
