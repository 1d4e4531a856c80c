from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ragkit import SAMPLES, upstream_settings

from rag_llm.locator import ServiceLocator
from rag_llm.providers.local import LocalEmbedder
from rag_llm.rag import RagService, RagSettings
from rag_llm.testing import UpstreamServer


@pytest.fixture(scope="session")
def local_embedder() -> Iterator[LocalEmbedder]:
    """The packaged all-MiniLM-L6-v2, loaded once for the whole session."""
    embedder = LocalEmbedder()
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
