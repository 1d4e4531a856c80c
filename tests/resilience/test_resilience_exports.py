"""The resilience package re-exports every module's public names (sorting: test_public_api)."""

from __future__ import annotations

import importlib

import pytest

import rag_llm.resilience

MODULES = ["rag_llm.resilience", "rag_llm.resilience.retry", "rag_llm.resilience.budget",
           "rag_llm.resilience.breaker", "rag_llm.resilience.balancer",
           "rag_llm.resilience.limiter", "rag_llm.resilience.health"]


@pytest.mark.parametrize("name", MODULES[1:])
def test_the_package_exports_each_modules_classes_and_functions(name: str) -> None:
    module = importlib.import_module(name)
    public = {n for n in module.__all__ if not n.startswith("DEFAULT_")}
    assert public <= set(rag_llm.resilience.__all__)
