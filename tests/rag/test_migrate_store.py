"""``rag-llm migrate-store``: an embedded store copied into PostgreSQL, whole and resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
from ragkit import SAMPLE_NAMES, SAMPLES

from rag_llm.cli import main
from rag_llm.rag.migrate import copy_store
from rag_llm.rag.pg_store import PostgresStore
from rag_llm.rag.sqlite_store import SQLiteStore
from rag_llm.testing import UpstreamServer


@pytest.fixture
def config(upstream: UpstreamServer, tmp_path: Path) -> Path:
    path = tmp_path / "rag-llm.toml"
    path.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "m"\nbase_url = "{upstream.base_url}"\n'
        f'[rag]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def test_a_copy_holds_every_document_chunk_and_vector_and_resumes(
    config: Path, tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ingest", str(SAMPLES), "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["migrate-store", "--from", str(tmp_path / "data"), "--to", pg_url,
                 "--config", str(config)]) == 0
    with SQLiteStore(tmp_path / "data") as sqlite, PostgresStore(pg_url) as pg:
        copied = sum(d.chunks for d in sqlite.documents())
        assert capsys.readouterr().out == \
            f"{len(SAMPLE_NAMES)} documents copied ({copied} chunks), 0 already there\n"
        assert [(d.id, d.source, d.title, d.sha256, d.recipe, d.chunks)
                for d in pg.documents()] == [
            (d.id, d.source, d.title, d.sha256, d.recipe, d.chunks) for d in sqlite.documents()]
        assert pg.embedding_model == sqlite.embedding_model
        for document in sqlite.documents():
            assert pg.chunks(document.id) != []
            assert [c.text for c in pg.chunks(document.id)] == \
                [c.text for c in sqlite.chunks(document.id)]
            for a, b in zip(pg.vectors(document.id), sqlite.vectors(document.id), strict=True):
                assert a == pytest.approx(b, abs=1e-6)
        probe = sqlite.vectors(sqlite.documents()[0].id)[0]
        assert [(h.chunk.text, h.document.id) for h in pg.search(probe, 3)] == \
            [(h.chunk.text, h.document.id) for h in sqlite.search(probe, 3)]

        # Interrupted after one document, the next run copies only the rest.
        first = sqlite.documents()[0]
        pg.delete_document(sqlite.documents()[1].id)
        report = copy_store(sqlite, pg)
        assert (report.copied, report.skipped) == (1, len(SAMPLE_NAMES) - 1)
        assert pg.document(first.id) is not None
        assert copy_store(sqlite, pg).copied == 0


def test_a_target_of_another_model_is_refused(tmp_path: Path, pg_url: str) -> None:
    from rag_llm.errors import ConfigError
    from rag_llm.rag.store import NewDocument

    doc = NewDocument(id="a", source="a", title="A", media_type="text/plain",
                      sha256="0" * 64, size=1)
    with SQLiteStore(tmp_path / "s") as sqlite, PostgresStore(pg_url) as pg:
        sqlite.replace_document(doc, ["a"], [1], [[1.0, 0.0]], "one/model")
        pg.replace_document(doc, ["a"], [1], [[1.0, 0.0]], "other/model")
        with pytest.raises(ConfigError, match="another model"):
            copy_store(sqlite, pg)
