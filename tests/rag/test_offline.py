"""Offline, end to end: the packaged local model ingests the sample corpus and answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.providers.inprocess import InProcessEmbedder
from rag_llm.rag import RagService, RagSettings, resolve_settings
from rag_llm.rag.answer import EXTRACTIVE_NOTE

QUESTIONS = [
    ("How long should shaped sourdough proof in the refrigerator?", "sourdough-bread.md"),
    ("When should a beekeeper treat the colony for varroa mites?", "honeybees.html"),
    ("How many seconds should an espresso shot take?", "espresso.txt"),
    ("How long should my longest run be before the race?", "marathon-training.pdf"),
    ("Which kind of volcano erupts explosively?", "volcanoes.html"),
    ("Is it safe to resend a request when the server closed the connection?",
     "connection-pooling.md"),
]


async def test_sample_corpus_answers_cite_the_right_document_first(
    local_embedder: InProcessEmbedder, corpus: Path, tmp_path: Path,
) -> None:
    settings = resolve_settings(Settings(), environ={})
    assert settings.provider("embedding") == {"type": "local"}
    assert settings.provider("llm") is None
    locator = ServiceLocator(settings)
    locator.register("embedding", local_embedder)  # the session's model: loaded once
    service = RagService.from_locator(locator, RagSettings(data_dir=tmp_path / "data"), {})
    try:
        report = await service.ingest_paths([corpus])
        assert report.failures == ()
        assert report.count("added") == 7
        assert service.embedding_model == "local/all-MiniLM-L6-v2"
        for question, expected in QUESTIONS:
            answer = await service.query(question)
            assert Path(answer.citations[0].source).name == expected, question
            assert answer.mode == "extractive"
            assert answer.answer.startswith(EXTRACTIVE_NOTE)
            assert f"[1] {answer.citations[0].text[:40]}" in answer.answer
            scores = [c.score for c in answer.citations]
            assert scores == sorted(scores, reverse=True)
            assert len(answer.citations) == 5
    finally:
        service.close()


def test_local_vectors_are_unit_length_and_match_between_sync_and_async(
    local_embedder: InProcessEmbedder,
) -> None:
    import asyncio

    texts = ["The cat sat on the mat.", "A feline rested on the rug.", "Stock prices fell."]
    vectors = local_embedder.embed(texts)
    assert [len(v) for v in vectors] == [384] * 3
    assert all(sum(x * x for x in v) == pytest.approx(1.0, abs=1e-5) for v in vectors)

    async def concurrently() -> list[list[list[float]]]:
        return await asyncio.gather(*(local_embedder.aembed([t]) for t in texts))

    for one, (again,) in zip(vectors, asyncio.run(concurrently()), strict=True):
        assert one == pytest.approx(again, abs=1e-5)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert local_embedder.count_tokens("unbelievably tokenized") >= 3
