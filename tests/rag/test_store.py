"""Every store (SQLite, and PostgreSQL with pgvector): atomic replace, delete, top-k search,
a second store on the same data, reopening, model checks. One suite, run once per store."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_llm.errors import ConfigError
from rag_llm.rag.sqlite_store import VECTORS_FILE, SQLiteStore
from rag_llm.rag.store import DocumentContent, NewDocument, SearchFilter

MODEL = "test/model"


def document(source: str, sha: str = "0" * 64) -> NewDocument:
    return NewDocument(id=f"id-{source}", source=source, title=source.title(),
                       media_type="text/plain", sha256=sha, size=10)


def axis(i: int, dims: int = 4) -> list[float]:
    vector = [0.0] * dims
    vector[i] = 1.0
    return vector


Opener = Callable[[], Any]  # opens another store on the same data: a directory, a database


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path)
    from rag_llm.rag.pg_store import PostgresStore

    url: str = request.getfixturevalue("pg_url")
    return lambda: PostgresStore(url)


@pytest.fixture
def store(open_store: Opener) -> Iterator[Any]:
    with open_store() as opened:
        yield opened


def test_search_returns_the_closest_chunks_best_first(store: Any) -> None:
    store.replace_document(document("a"), ["a0", "a1"], [1, 1], [axis(0), axis(1)], MODEL)
    store.replace_document(document("b"), ["b0"], [1], [[1.0, 1.0, 0.0, 0.0]], MODEL)
    hits = store.search([2.0, 0.1, 0.0, 0.0], k=2)
    assert [(h.chunk.text, h.document.source) for h in hits] == [("a0", "a"), ("b0", "b")]
    assert hits[0].score == pytest.approx(2.0 / math.sqrt(4.01))
    assert hits[0].chunk.index == 0
    assert hits[0].document.chunks == 2
    assert len(store.search(axis(3), k=10)) == 3


def test_replacing_a_document_swaps_its_chunks_and_reuses_their_slots(
    store: Any, tmp_path: Path,
) -> None:
    store.replace_document(document("a"), ["old0", "old1"], [1, 1], [axis(0), axis(1)], MODEL)
    size = (tmp_path / VECTORS_FILE).stat().st_size if isinstance(store, SQLiteStore) else 0
    record = store.replace_document(document("a", "1" * 64), ["new0", "new1"], [2, 2],
                                    [axis(2), axis(3)], MODEL)
    store.replace_document(document("a", "2" * 64), ["new0", "new1"], [2, 2],
                           [axis(2), axis(3)], MODEL)
    assert record.chunks == 2
    assert [c.text for c in store.chunks("id-a")] == ["new0", "new1"]
    assert store.chunk_count() == 2
    assert {h.chunk.text for h in store.search(axis(0), k=5)} == {"new0", "new1"}
    if isinstance(store, SQLiteStore):
        # Two replacements: the first reused nothing (the old slots were not free yet), the
        # second reused the first version's slots. The file holds four rows, never six.
        assert (tmp_path / VECTORS_FILE).stat().st_size == 2 * size
    assert store.document_by_source("a").sha256 == "2" * 64


def test_delete_removes_the_document_and_its_chunks_from_search(store: Any) -> None:
    store.replace_document(document("a"), ["a0"], [1], [axis(0)], MODEL)
    store.replace_document(document("b"), ["b0"], [1], [axis(1)], MODEL)
    assert store.delete_document("id-a") is True
    assert store.delete_document("id-a") is False
    assert [d.source for d in store.documents()] == ["b"]
    assert [h.chunk.text for h in store.search(axis(0), k=5)] == ["b0"]


def test_each_write_shows_in_the_next_search(store: Any) -> None:
    assert store.search(axis(0), k=3) == []
    store.replace_document(document("a"), ["a0"], [1], [axis(0)], MODEL)
    assert [h.chunk.text for h in store.search(axis(0), k=3)] == ["a0"]
    store.replace_document(document("b"), ["b0", "b1"], [1, 1], [axis(1), axis(2)], MODEL)
    assert [h.chunk.text for h in store.search(axis(2), k=1)] == ["b1"]
    store.replace_document(document("a"), ["a0 again"], [1], [axis(3)], MODEL)
    assert [h.chunk.text for h in store.search(axis(3), k=1)] == ["a0 again"]
    assert len(store.search(axis(3), k=9)) == 3
    store.delete_document("id-b")
    assert [h.chunk.text for h in store.search(axis(1), k=9)] == ["a0 again"]


def test_a_second_store_on_the_same_data_sees_each_write(open_store: Opener) -> None:
    with open_store() as first, open_store() as second:
        assert second.search(axis(0), k=1) == []
        first.replace_document(document("a"), ["a0"], [1], [axis(0)], MODEL)
        assert [h.chunk.text for h in second.search(axis(0), k=1)] == ["a0"]
        first.delete_document("id-a")
        assert second.search(axis(0), k=1) == []


def test_the_store_persists_across_reopening(open_store: Opener) -> None:
    with open_store() as store:
        store.replace_document(document("a"), ["a0"], [3], [axis(1)], MODEL)
    with open_store() as store:
        assert store.embedding_model == MODEL
        assert store.dimensions == 4
        [hit] = store.search(axis(1), k=1)
        assert (hit.chunk.text, hit.chunk.tokens, hit.score) == ("a0", 3, pytest.approx(1.0))


def test_each_document_keeps_the_recipe_it_was_cut_with(open_store: Opener) -> None:
    cut = NewDocument(id="id-r", source="r", title="R", media_type="text/plain",
                      sha256="1" * 64, size=3, recipe="loaders=1 chunk_size=50")
    with open_store() as store:
        stored = store.replace_document(cut, ["r0"], [1], [axis(2)], MODEL)
        assert stored.recipe == "loaders=1 chunk_size=50"
    with open_store() as store:
        assert store.document("id-r").recipe == "loaders=1 chunk_size=50"
        assert store.document_by_source("r") == stored
        assert [d.recipe for d in store.documents()] == ["loaders=1 chunk_size=50"]
        assert store.search(axis(2), k=1)[0].document == stored


def test_a_documents_vectors_come_back_in_chunk_order(store: Any) -> None:
    store.replace_document(document("v"), ["v0", "v1", "v2"], [1, 1, 1],
                           [axis(2), axis(0), [0.6, 0.8, 0.0, 0.0]], MODEL)
    store.replace_document(document("w"), ["w0"], [1], [axis(3)], MODEL)
    got = store.vectors("id-v")
    assert [[round(x, 6) for x in row] for row in got] == [axis(2), axis(0), [0.6, 0.8, 0, 0]]
    assert store.vectors("id-none") == []


def test_a_sqlite_store_from_before_recipes_opens_with_them_empty(tmp_path: Path) -> None:
    import sqlite3

    from rag_llm.rag.sqlite_store import DATABASE_FILE

    with SQLiteStore(tmp_path) as store:
        store.replace_document(document("old"), ["o0"], [1], [axis(0)], MODEL)
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        db.execute("ALTER TABLE documents DROP COLUMN recipe")
    with SQLiteStore(tmp_path) as store:
        assert store.document("id-old").recipe == ""
        store.replace_document(document("new"), ["n0"], [1], [axis(1)], MODEL)
        assert len(store.documents()) == 2


def test_vectors_of_another_model_or_size_are_refused_while_chunks_exist(
    store: Any,
) -> None:
    store.replace_document(document("a"), ["a0"], [1], [axis(0)], MODEL)
    with pytest.raises(ConfigError, match="test/model") as caught:
        store.replace_document(document("b"), ["b0"], [1], [axis(0, 8)], "other/model")
    assert caught.value.field == "embedding"
    assert [d.source for d in store.documents()] == ["a"]  # the failed write left no trace
    with pytest.raises(ConfigError, match="dimensions"):
        store.search(axis(0, 8), k=1)
    store.delete_document("id-a")
    store.replace_document(document("b"), ["b0"], [1], [axis(0, 8)], "other/model")
    assert store.embedding_model == "other/model"
    assert store.dimensions == 8


def _content(source: str, texts: list[str], vectors: list[list[float]]) -> DocumentContent:
    return DocumentContent(document(source), texts, [1] * len(texts), vectors)


def test_replace_all_swaps_every_document_and_the_model_at_once(open_store: Opener) -> None:
    with open_store() as store, open_store() as other:
        store.replace_document(document("a"), ["a0", "a1"], [1, 1], [axis(0), axis(1)], MODEL)
        store.replace_document(document("b"), ["b0"], [1], [axis(2)], MODEL)
        for _ in range(2):  # the second swap keeps the 6-dimension rows' size
            expected = {d.id: d for d in store.documents()}
            assert store.replace_all(
                [_content("a", ["a0", "a1"], [axis(5, 6), axis(4, 6)]),
                 _content("c", ["c0"], [axis(0, 6)])], "new/model", expected)
        assert (other.embedding_model, other.dimensions) == ("new/model", 6)
        assert [(d.source, d.chunks) for d in other.documents()] == [("a", 2), ("c", 1)]
        assert [h.chunk.text for h in other.search(axis(4, 6), k=3)][:1] == ["a1"]
        assert [[round(x, 6) for x in row] for row in other.vectors("id-a")] == [
            axis(5, 6), axis(4, 6)]
        assert len(other.search(axis(0, 6), k=9)) == 3  # b is gone, and nothing else is left
        # The old rows' space is reused by the next write.
        store.replace_document(document("d"), ["d0"], [1], [axis(1, 6)], "new/model")
        assert [h.chunk.text for h in other.search(axis(1, 6), k=1)] == ["d0"]
    with open_store() as reopened:
        assert [d.source for d in reopened.documents()] == ["a", "c", "d"]
        assert [h.chunk.text for h in reopened.search(axis(0, 6), k=1)] == ["c0"]


def test_replace_all_changes_nothing_when_another_writer_came_first(
    open_store: Opener,
) -> None:
    with open_store() as store, open_store() as other:
        store.replace_document(document("a"), ["a0"], [1], [axis(0)], MODEL)
        expected = {d.id: d for d in store.documents()}
        other.replace_document(document("b"), ["b0"], [1], [axis(1)], MODEL)
        assert not store.replace_all([_content("a", ["a0"], [axis(0, 6)])], "new/model",
                                     expected)
        assert store.embedding_model == MODEL
        assert [h.chunk.text for h in store.search(axis(1), k=1)] == ["b0"]


def test_a_failed_replace_all_leaves_the_old_content_whole(open_store: Opener) -> None:
    from rag_llm.errors import StoreError

    with open_store() as store:
        store.replace_document(document("a"), ["a0", "a1"], [1, 1], [axis(0), axis(1)], MODEL)
        expected = {d.id: d for d in store.documents()}
        twice = NewDocument(id="id-other", source="a", title="A", media_type="text/plain",
                            sha256="0" * 64, size=10)  # a second document of source a
        contents = [_content("a", ["a0"], [axis(0, 6)]),
                    DocumentContent(twice, ["x"], [1], [axis(1, 6)])]
        # SQLite's comes as a StoreError, PostgreSQL's as psycopg's UniqueViolation.
        with pytest.raises(Exception, match=r"(?i)unique") as caught:
            store.replace_all(contents, "new/model", expected)
        assert isinstance(caught.value, StoreError) or type(caught.value).__module__.startswith(
            "psycopg")
    with open_store() as store:
        assert (store.embedding_model, store.dimensions) == (MODEL, 4)
        assert [h.chunk.text for h in store.search(axis(1), k=2)] == ["a1", "a0"]
        store.replace_document(document("b"), ["b0"], [1], [axis(2)], MODEL)
        assert [h.chunk.text for h in store.search(axis(2), k=1)] == ["b0"]


def test_a_filtered_search_returns_only_the_documents_it_lets_through(store: Any) -> None:
    for source, vectors in (("a", [axis(0), axis(1)]), ("b", [[0.9, 0.1, 0, 0]]),
                            ("notes/c", [[0.8, 0.2, 0, 0]]), ("notes/d", [axis(2)])):
        store.replace_document(document(source), [f"{source}{i}" for i in range(len(vectors))],
                               [1] * len(vectors), vectors, MODEL)

    def texts(where: SearchFilter, k: int = 9) -> list[str]:
        return [h.chunk.text for h in store.search(axis(0), k, where)]

    assert texts(SearchFilter(document_ids=frozenset({"id-b", "id-notes/d"}))) == [
        "b0", "notes/d0"]
    assert texts(SearchFilter(source_prefix="notes/")) == ["notes/c0", "notes/d0"]
    assert texts(SearchFilter(source_prefix="notes/"), k=1) == ["notes/c0"]
    assert texts(SearchFilter(document_ids=frozenset({"id-a", "id-notes/c"}),
                              source_prefix="notes/")) == ["notes/c0"]
    assert texts(SearchFilter(document_ids=frozenset())) == []
    assert texts(SearchFilter(source_prefix="elsewhere/")) == []
    assert texts(SearchFilter(source_prefix="")) == texts(SearchFilter(), k=9)
    assert len(texts(SearchFilter())) == 5


def test_mismatched_lengths_are_rejected_before_anything_is_written(store: Any) -> None:
    with pytest.raises(ValueError, match="must match"):
        store.replace_document(document("a"), ["a0", "a1"], [1, 1], [axis(0)], MODEL)
    assert store.documents() == []
    assert store.embedding_model is None


def test_search_at_scale_stays_exact(store: Any) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    for start in range(0, 2000, 500):
        store.replace_document(document(f"d{start}"), [f"c{i}" for i in range(start, start + 500)],
                               [1] * 500, vectors[start:start + 500].tolist(), MODEL)
    query = rng.standard_normal(16)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [f"c{i}" for i in np.argsort(-(unit @ query))[:10]]
    assert [h.chunk.text for h in store.search(query.tolist(), k=10)] == expected


def test_use_after_close_is_a_clear_error(open_store: Opener) -> None:
    store = open_store()
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="is closed"):
        store.documents()


def test_a_file_that_is_no_sqlite_database_is_a_config_error_naming_the_directory(
    tmp_path: Path,
) -> None:
    from rag_llm.rag.sqlite_store import DATABASE_FILE

    (tmp_path / DATABASE_FILE).write_bytes(b"not a database, " * 512)
    with pytest.raises(ConfigError, match="cannot hold the store: file is not a database"
                       ) as caught:
        SQLiteStore(tmp_path)
    assert (caught.value.field, caught.value.value) == ("data_dir", str(tmp_path))


def test_a_failed_write_that_switches_dimensions_leaves_the_empty_store_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rag_llm.errors import StoreError

    with SQLiteStore(tmp_path) as store:
        store.replace_document(document("a"), ["a0", "a1", "a2"], [1, 1, 1],
                               [axis(0), axis(1), axis(2)], MODEL)
        store.delete_document("id-a")

        def no_space(*_: object) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(store, "_write_vectors", no_space)
            with pytest.raises(StoreError):
                store.replace_document(document("b"), ["b0"], [1], [axis(0, 8)], "other/model")
        # Rolled back to the 4-dimension store it was, whose vectors file still fits it.
        assert (store.dimensions, store.search(axis(0), k=1)) == (4, [])
        store.replace_document(document("b"), ["b0"], [1], [axis(0, 8)], "other/model")
        assert [hit.chunk.text for hit in store.search(axis(0, 8), k=1)] == ["b0"]
    with SQLiteStore(tmp_path) as reopened:
        assert reopened.vectors("id-b") == [axis(0, 8)]
