from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import AppFactory
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support import provider_config

from rag_llm.api import create_app
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagSettings
from rag_llm.testing import UpstreamServer


@pytest.fixture(autouse=True)
def _no_openai_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unconfigured providers must fall back the same way on every machine."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_app(upstream: UpstreamServer, tmp_path: Path) -> AppFactory:
    """Apps whose embedding (and chat) provider is the loopback upstream."""

    def build(*, chat: bool = True, **settings: Any) -> FastAPI:
        providers = {"embedding": provider_config(upstream)}
        if chat:
            providers["llm"] = provider_config(upstream, model="gpt-4o-mini")
        locator = ServiceLocator(Settings(providers=providers))
        return create_app(locator, rag_settings=RagSettings(data_dir=tmp_path / "data",
                                                            **settings))

    return build


@pytest.fixture
def client(make_app: AppFactory) -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client
