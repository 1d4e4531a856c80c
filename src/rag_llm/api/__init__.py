"""The HTTP service (FastAPI): health today; the RAG endpoints build on it."""

from __future__ import annotations

from rag_llm.api.app import create_app

__all__ = ["create_app"]
