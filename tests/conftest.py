from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import structlog
from statekit import BINARY, RedisServer, free_port

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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the tests' own, on a free port of 127.0.0.1, for the session.

    Without redis-server the tests that ask for it are skipped, saying so, except in CI
    (``CI`` set), where ``.ci/run`` installs it and a missing one fails them."""
    if BINARY is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="rag-llm-redis-") as workdir:
        server = RedisServer(free_port(), workdir)
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's limits."""
    return f"test-{uuid.uuid4().hex[:10]}"
