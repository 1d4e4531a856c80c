"""The RAG and API packages' curated public names: sorted and importable."""

from __future__ import annotations

import importlib

import pytest

MODULES = ["rag_llm.rag", "rag_llm.rag.answer", "rag_llm.rag.chunking", "rag_llm.rag.defaults",
           "rag_llm.rag.ingest", "rag_llm.rag.loaders", "rag_llm.rag.service",
           "rag_llm.rag.settings", "rag_llm.rag.sqlite_store", "rag_llm.rag.store",
           "rag_llm.providers.local", "rag_llm.api", "rag_llm.api.schemas", "rag_llm.cli"]


def isort_order(name: str) -> tuple[int, str]:
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__, key=isort_order)
    for attribute in module.__all__:
        assert hasattr(module, attribute), attribute
