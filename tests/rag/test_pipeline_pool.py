"""End to end through the pool: ingest and answer with the loopback upstream as provider."""

from __future__ import annotations

from pathlib import Path

from ragkit import upstream_settings

from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagService, RagSettings
from rag_llm.rag.answer import SYSTEM_PROMPT
from rag_llm.testing import UpstreamServer

MAX_CONNECTIONS = 3


def write_corpus(folder: Path, documents: int, paragraphs: int) -> None:
    folder.mkdir()
    for d in range(documents):
        text = "\n\n".join(f"Document {d} paragraph {p} says {'something ' * 120}."
                           for p in range(paragraphs))
        (folder / f"doc{d}.md").write_text(text)


async def test_full_ingest_stays_within_max_connections_and_sends_only_its_requests(
    upstream: UpstreamServer, tmp_path: Path,
) -> None:
    write_corpus(tmp_path / "corpus", documents=12, paragraphs=50)
    upstream.delay = 0.02  # keeps batches in flight, so the bound is what limits them
    locator = ServiceLocator(upstream_settings(upstream, max_connections=MAX_CONNECTIONS,
                                               max_keepalive_connections=MAX_CONNECTIONS))
    settings = RagSettings(data_dir=tmp_path / "data", embed_batch_size=16,
                           embed_concurrency=8)
    with RagService.from_locator(locator, settings, {}) as service:
        report = await service.ingest_paths([tmp_path / "corpus"])
        ingest_connections = upstream.connections_accepted
        ingest_peak = upstream.max_concurrent_connections
        chunks = {c.text for d in await service.documents() for c in service.store.chunks(d.id)}
        answer = await service.query("Document 3 paragraph 7", top_k=4)
    await locator.cleanup()

    assert report.failures == ()
    assert report.chunks_stored == len(chunks) == 600
    assert 1 < ingest_connections <= MAX_CONNECTIONS
    assert ingest_peak <= MAX_CONNECTIONS
    # The chat provider has its own pool: one more connection, for the one chat request.
    assert upstream.connections_accepted == ingest_connections + 1
    embeddings = [r for r in upstream.requests if r.path == "/v1/embeddings"]
    chats = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert len(embeddings) + len(chats) == len(upstream.requests)
    sent = [text for r in embeddings for text in r.json["input"]]
    # Every chunk embedded exactly once, in batches of at most 16, then the one question.
    assert sorted(sent[:-1]) == sorted(chunks)
    assert all(len(r.json["input"]) <= 16 for r in embeddings)
    assert sent[-1] == "Document 3 paragraph 7"
    assert len(chats) == 1
    messages = chats[0].json["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    for citation in answer.citations:
        assert f"[{citation.number}] {citation.title} ({citation.source})\n{citation.text}" in (
            messages[1]["content"])
    assert answer.mode == "generated"
    assert answer.answer == "echo: " + messages[1]["content"]
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)


async def test_streamed_answer_arrives_as_citations_deltas_and_done(
    upstream: UpstreamServer, tmp_path: Path,
) -> None:
    write_corpus(tmp_path / "corpus", documents=2, paragraphs=2)
    locator = ServiceLocator(upstream_settings(upstream))
    with RagService.from_locator(locator, RagSettings(data_dir=tmp_path / "data"), {}) as rag:
        await rag.ingest_paths([tmp_path / "corpus"])
        events = [event async for event in rag.stream("Document 1", top_k=2)]
        whole = await rag.query("Document 1", top_k=2)
    await locator.cleanup()
    kinds = [e.kind for e in events]
    assert kinds[0] == "citations"
    assert kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    assert len(kinds) > 4
    assert "".join(e.data for e in events[1:-1]) == whole.answer
    assert [c["chunk_id"] for c in events[0].data] == [c.chunk_id for c in whole.citations]
    assert events[-1].data == {"mode": "generated"}
