"""rag-llm: pooled, observable model providers for retrieval-augmented LLM applications."""

from __future__ import annotations

__version__ = "0.1.0"
