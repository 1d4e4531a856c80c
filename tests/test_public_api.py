"""The curated public API: sorted, complete and importable."""

from __future__ import annotations

import importlib

import pytest

import rag_llm

MODULES = ["rag_llm", "rag_llm.errors", "rag_llm.config", "rag_llm.providers",
           "rag_llm.locator", "rag_llm.pool", "rag_llm.testing", "rag_llm.transport",
           "rag_llm.observability.stats", "rag_llm.metrics",
           "rag_llm.rag", "rag_llm.rag.answer", "rag_llm.rag.chunking", "rag_llm.rag.defaults",
           "rag_llm.rag.ingest", "rag_llm.rag.loaders", "rag_llm.rag.service",
           "rag_llm.rag.settings", "rag_llm.rag.sqlite_store", "rag_llm.rag.store",
           "rag_llm.rag.stores",
           "rag_llm.providers.local", "rag_llm.api", "rag_llm.api.schemas", "rag_llm.cli",
           "rag_llm.resilience", "rag_llm.resilience.retry", "rag_llm.resilience.budget",
           "rag_llm.resilience.breaker", "rag_llm.resilience.balancer",
           "rag_llm.resilience.limiter"]


def isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each alphabetical (ruff's RUF022)."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__, key=isort_order)
    for attribute in module.__all__:
        assert hasattr(module, attribute), attribute


def test_top_level_exports_every_exception() -> None:
    from rag_llm import errors

    assert set(errors.__all__) <= set(rag_llm.__all__)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RagLLMError)
