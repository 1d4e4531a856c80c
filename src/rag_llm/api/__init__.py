"""The HTTP service (FastAPI): health today; the RAG endpoints build on it."""

from __future__ import annotations

from rag_llm.api.app import create_app, create_app_from_environment

__all__ = ["create_app", "create_app_from_environment"]
