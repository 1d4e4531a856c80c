"""The store is chosen by ``[rag] store``, from a registry of names imported when chosen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ragkit import upstream_settings

from rag_llm.errors import ConfigError
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagService, RagSettings, SQLiteStore
from rag_llm.rag import stores as stores_module
from rag_llm.rag.store import DocumentStore
from rag_llm.testing import UpstreamServer

opened: list[tuple[RagSettings, SQLiteStore]] = []


class RecordingStore(SQLiteStore):
    """A store of its own kind, so the test sees which one the service got."""


def recording_store(settings: RagSettings) -> DocumentStore:
    store = RecordingStore(settings.data_dir / "recorded")
    opened.append((settings, store))
    return store


def test_the_default_store_is_sqlite(tmp_path: Path) -> None:
    assert RagSettings().store == "sqlite"
    assert RagSettings.load(environ={}).store == "sqlite"
    with stores_module.open_store(RagSettings(data_dir=tmp_path)) as store:
        assert type(store) is SQLiteStore
        assert store.directory == tmp_path


def test_the_store_is_read_from_the_rag_table_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(stores_module.STORES, "recording", f"{__name__}:recording_store")
    config = tmp_path / "rag.toml"
    config.write_text('[rag]\nstore = "recording"\n')
    assert RagSettings.load(config, environ={}).store == "recording"
    assert RagSettings.load(config, environ={"RAG_LLM_STORE": "sqlite"}).store == "sqlite"


@pytest.mark.parametrize(("name", "suggestion"), [("sqllite", "sqlite"), ("SQLite", "sqlite")])
def test_an_unknown_store_is_refused_naming_the_closest_one(name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RagSettings(store=name)
    assert (caught.value.field, caught.value.value) == ("store", name)
    assert f"did you mean {suggestion!r}?" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^store='sqllite'.*'sqlite'"):
        RagSettings.load(environ={"RAG_LLM_STORE": "sqllite"})


def test_an_unknown_store_with_no_close_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"store='qdrant'.*known: sqlite") as caught:
        RagSettings(store="qdrant")
    assert "did you mean" not in str(caught.value)


def test_a_registered_store_that_cannot_be_imported_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(stores_module.STORES, "missing", "rag_llm_no_such_module:make")
    settings = RagSettings(data_dir=tmp_path, store="missing")
    with pytest.raises(ConfigError, match=r"store='missing'.*rag_llm_no_such_module"):
        stores_module.open_store(settings)
    assert "rag_llm_no_such_module" not in sys.modules


async def test_a_store_registered_under_a_new_name_is_used_by_the_service(
    upstream: UpstreamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(stores_module.STORES, "recording", f"{__name__}:recording_store")
    monkeypatch.setattr(sys.modules[__name__], "opened", [])
    settings = RagSettings(data_dir=tmp_path / "data", store="recording")
    locator = ServiceLocator(upstream_settings(upstream))
    try:
        with RagService.from_locator(locator, settings, {}) as service:
            [(given, store)] = opened
            assert given is settings
            assert service.store is store
            report = await service.ingest_files([("notes.txt", b"Tide pools hold anemones.")])
            assert (len(report.documents), report.failures) == (1, ())
            assert [d.source for d in store.documents()] == ["notes.txt"]
    finally:
        await locator.cleanup()
