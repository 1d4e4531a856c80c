from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from rag_llm.testing import UpstreamServer


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A real OpenAI-compatible server on 127.0.0.1 that counts TCP connections."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def tls_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tls=True) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
