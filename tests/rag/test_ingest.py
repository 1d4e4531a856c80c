"""Ingestion: idempotent re-ingest, replacement of changed files, bad files named, rest kept."""

from __future__ import annotations

import os
from pathlib import Path

from ragkit import SAMPLE_NAMES, make_pdf

from rag_llm.rag import Chunker, RagService
from rag_llm.testing import Fault, UpstreamServer


async def test_reingesting_unchanged_files_does_nothing(
    upstream_service: RagService, corpus: Path, upstream: UpstreamServer,
) -> None:
    first = await upstream_service.ingest_paths([corpus])
    assert first.count("added") == 7
    assert first.failures == ()
    chunks = upstream_service.store.chunk_count()
    assert chunks == first.chunks_stored
    requests = len(upstream.requests)

    again = await upstream_service.ingest_paths([corpus, corpus / "espresso.txt"])
    assert [d.status for d in again.documents] == ["unchanged"] * 7
    assert again.chunks_stored == 0
    assert upstream_service.store.chunk_count() == chunks
    assert len(upstream.requests) == requests  # nothing was embedded again
    assert [d.id for d in again.documents] == [d.id for d in first.documents]


async def test_changed_chunk_settings_recut_and_reembed_unchanged_files(
    upstream: UpstreamServer, corpus: Path, tmp_path: Path,
) -> None:
    from ragkit import upstream_settings

    from rag_llm.locator import ServiceLocator
    from rag_llm.rag import RagSettings

    async def ingest(**chunking: int) -> tuple[list[str], dict[str, int]]:
        locator = ServiceLocator(upstream_settings(upstream))
        settings = RagSettings(data_dir=tmp_path / "data", **chunking)
        with RagService.from_locator(locator, settings, {}) as service:
            report = await service.ingest_paths([corpus])
            counts = {d.source: d.chunks for d in await service.documents()}
        await locator.cleanup()
        return [d.status for d in report.documents], counts

    statuses, wide = await ingest(chunk_size=200, chunk_overlap=40)
    assert statuses == ["added"] * 7
    statuses, same = await ingest(chunk_size=200, chunk_overlap=40)
    assert statuses == ["unchanged"] * 7
    assert same == wide
    embedded = len(upstream.requests)
    statuses, narrow = await ingest(chunk_size=40, chunk_overlap=10)
    assert statuses == ["updated"] * 7
    assert len(upstream.requests) > embedded  # embedded again
    assert sum(narrow.values()) > sum(wide.values())
    statuses, _ = await ingest(chunk_size=40, chunk_overlap=0)
    assert statuses == ["updated"] * 7


async def test_a_changed_file_replaces_its_chunks(
    upstream_service: RagService, corpus: Path,
) -> None:
    await upstream_service.ingest_paths([corpus])
    target = corpus / "tide-pools.md"
    [before] = [d for d in await upstream_service.documents() if d.source == str(target)]
    total = upstream_service.store.chunk_count()

    target.write_text("# Tide pools\n\nA single new sentence about anemones.\n")
    report = await upstream_service.ingest_paths([corpus])
    assert [(d.source, d.status) for d in report.documents if d.status != "unchanged"] == [
        (str(target), "updated")]
    chunks = upstream_service.store.chunks(before.id)
    assert [c.text for c in chunks] == ["# Tide pools\nA single new sentence about anemones."]
    assert upstream_service.store.chunk_count() == total - before.chunks + 1
    [hit] = await upstream_service.retrieve(chunks[0].text, top_k=1)
    assert (hit.document_id, hit.text, hit.score) == (before.id, chunks[0].text, 1.0)


async def test_corrupt_and_unreadable_files_are_named_and_the_rest_is_stored(
    upstream_service: RagService, corpus: Path,
) -> None:
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n\x00garbage that is no PDF")
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02 not text")
    os.symlink(corpus / "missing-target.md", corpus / "dangling.md")
    (corpus / "extra.pdf").write_bytes(make_pdf([["A real PDF about lighthouses."]]))

    report = await upstream_service.ingest_paths([corpus, corpus / "notes.docx"])
    failures = {Path(f.source).name: f.error for f in report.failures}
    assert failures.keys() == {"broken.pdf", "binary.txt", "dangling.md", "notes.docx"}
    assert failures["broken.pdf"].startswith("is not a readable PDF")
    assert failures["binary.txt"] == "is binary, not text"
    assert failures["dangling.md"].startswith("cannot be read")
    stored = sorted(Path(d.source).name for d in report.documents)
    assert stored == sorted(["extra.pdf", *SAMPLE_NAMES])
    assert len(await upstream_service.documents()) == 8


async def test_uploaded_files_are_ingested_by_name(upstream_service: RagService) -> None:
    report = await upstream_service.ingest_files([
        ("guide.md", b"# Guide\n\nHello there."), ("bad.pdf", b"nope")])
    assert [(d.source, d.status) for d in report.documents] == [("guide.md", "added")]
    assert [f.source for f in report.failures] == ["bad.pdf"]
    again = await upstream_service.ingest_files([("guide.md", b"# Guide\n\nHello there.")])
    assert again.documents[0].status == "unchanged"


async def test_a_failed_embedding_batch_fails_only_its_documents(
    upstream_service: RagService, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    # 64 chunks of a.txt fill the first batch of 64, so b.txt's chunk is alone in the second.
    text = "\n\n".join(f"{'word ' * 150}number {i}." for i in range(64))
    assert len(Chunker(size=200, overlap=40).split(text)) == 64
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text("Just one short document.")
    upstream.add_fault(Fault(status=500, path="/embeddings"))
    report = await upstream_service.ingest_paths([folder])
    assert len(report.failures) == 1
    assert report.failures[0].error.startswith("embedding failed: ")
    assert "HTTP 500" in report.failures[0].error
    assert len(report.documents) == 1
