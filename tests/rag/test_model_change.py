"""A change of embedding model: the next ingest re-embeds the whole store, in one swap.

Over both stores, against the loopback upstream, whose vectors are a known function of
each text and size, so every stored vector is checked against the model it should come from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from ragkit import upstream_settings

from rag_llm.config import Settings
from rag_llm.errors import ConfigError, RagLLMError
from rag_llm.locator import ServiceLocator
from rag_llm.rag import NewDocument, RagService, RagSettings
from rag_llm.testing import Fault, UpstreamServer

Open = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgres"])
def rag_settings(request: pytest.FixtureRequest, tmp_path: Path) -> RagSettings:
    if request.param == "sqlite":
        return RagSettings(data_dir=tmp_path / "data")
    return RagSettings(data_dir=tmp_path / "data", store=request.getfixturevalue("pg_url"))


@pytest.fixture
def open_service(upstream: UpstreamServer, rag_settings: RagSettings) -> Open:
    @asynccontextmanager
    async def opened(model: str = "text-embedding-3-small",
                     dimensions: int | None = None) -> AsyncIterator[RagService]:
        settings = upstream_settings(upstream, chat=False)
        embedding = dict(settings.providers["embedding"], model=model)
        if dimensions is not None:
            embedding["dimensions"] = dimensions
        locator = ServiceLocator(Settings(providers={"embedding": embedding}))
        with RagService.from_locator(locator, rag_settings, {}) as service:
            yield service
        await locator.cleanup()

    return opened


def texts_embedded(upstream: UpstreamServer, since: int) -> int:
    return sum(len(r.json["input"]) for r in upstream.requests[since:]
               if r.path.endswith("/embeddings"))


async def test_the_next_ingest_re_embeds_every_stored_chunk_with_the_new_model(
    open_service: Open, upstream: UpstreamServer, corpus: Path,
) -> None:
    async with open_service() as service:
        await service.ingest_paths([corpus])
        before = {d.source: d.chunks for d in await service.documents()}
    (corpus / "espresso.txt").unlink()  # stays stored: re-embedded from its stored text
    changed = corpus / "tide-pools.md"
    changed.write_text("# Tide pools\n\nA single new sentence about anemones.\n")

    async with open_service("text-embedding-3-large", dimensions=12) as service:
        with pytest.raises(ConfigError, match="the next ingest") as caught:
            await service.retrieve("anemones")
        assert caught.value.field == "embedding"
        mark = len(upstream.requests)
        totals: list[int] = []
        steps: list[int] = []
        report = await service.ingest_paths([corpus], steps.append, totals.append)
        store = service.store
        assert (store.embedding_model, store.dimensions) == (
            "openai/text-embedding-3-large", 12)
        statuses = {d.source: d.status for d in report.documents}
        assert statuses.pop(str(changed)) == "updated"
        assert set(statuses.values()) == {"unchanged"}
        after = {d.source: d.chunks for d in await service.documents()}
        assert after.keys() == before.keys()  # espresso.txt included
        assert after[str(changed)] == 1
        assert report.reembedded == sum(after.values()) - 1
        assert texts_embedded(upstream, mark) == sum(after.values())  # each chunk once
        assert (totals, sum(steps)) == ([sum(after.values())], sum(after.values()))  # one bar
        for record in await service.documents():
            chunks = store.chunks(record.id)
            expected = [upstream.expected_embedding(c.text, 12) for c in chunks]
            got = store.vectors(record.id)
            assert [[round(x, 5) for x in row] for row in got] == [
                [round(x, 5) for x in row] for row in expected], record.source
        query = "# Tide pools\nA single new sentence about anemones."  # its one chunk
        [hit] = await service.retrieve(query, top_k=1)
        assert (hit.source, round(hit.score, 6)) == (str(changed), 1.0)

    async with open_service("text-embedding-3-large", dimensions=12) as service:
        mark = len(upstream.requests)
        report = await service.ingest_paths([corpus])  # the same model again: nothing to do
        assert report.reembedded == 0
        assert texts_embedded(upstream, mark) == 0


async def test_a_failed_re_embedding_leaves_the_store_as_it_was(
    open_service: Open, upstream: UpstreamServer, corpus: Path,
) -> None:
    async with open_service() as service:
        await service.ingest_paths([corpus])
        vectors = {d.id: service.store.vectors(d.id) for d in await service.documents()}
    async with open_service("text-embedding-3-large", dimensions=12) as service:
        upstream.add_fault(Fault(status=500, path="/embeddings"))
        with pytest.raises(RagLLMError, match="the store is unchanged") as caught:
            await service.ingest_paths([corpus])
        assert "HTTP 500" in str(caught.value)
        store = service.store
        assert store.embedding_model == "openai/text-embedding-3-small"
        assert {d.id: store.vectors(d.id) for d in await service.documents()} == vectors
        report = await service.ingest_paths([corpus])  # the fault was one reply
        assert report.failures == ()
        assert store.dimensions == 12


async def test_a_new_size_of_the_same_model_re_embeds_too(
    open_service: Open, upstream: UpstreamServer, corpus: Path,
) -> None:
    async with open_service(dimensions=8) as service:
        await service.ingest_paths([corpus / "espresso.txt"])
    async with open_service(dimensions=16) as service:
        report = await service.ingest_paths([corpus / "espresso.txt"])
        assert report.reembedded == service.store.chunk_count()
        assert service.store.dimensions == 16


async def test_a_document_another_writer_stores_during_the_switch_is_embedded_too(
    open_service: Open, upstream: UpstreamServer, corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_service() as service:
        await service.ingest_paths([corpus / "espresso.txt"])
        old_dims = service.store.dimensions
    late = NewDocument(id="id-late", source="late.txt", title="Late", media_type="text/plain",
                       sha256="0" * 64, size=12)
    async with open_service("text-embedding-3-large", dimensions=12) as service:
        store = service.store
        swap = store.replace_all
        tries: list[int] = []

        def raced(contents: Any, model: str, expected: Any) -> bool:
            if not tries:  # a writer still on the old model gets in first
                store.replace_document(late, ["a late chunk"], [3], [
                    upstream.expected_embedding("a late chunk", old_dims)],
                    "openai/text-embedding-3-small")
            tries.append(len(contents))
            return bool(swap(contents, model, expected))

        monkeypatch.setattr(store, "replace_all", raced)
        await service.ingest_paths([corpus / "espresso.txt"])
        assert tries == [1, 2]  # refused, then again with the late document
        assert [d.source for d in store.documents()][-1] == "late.txt"
        [vector] = store.vectors("id-late")
        assert [round(x, 5) for x in vector] == [
            round(x, 5) for x in upstream.expected_embedding("a late chunk", 12)]
