"""Structured events and logging configuration."""

from __future__ import annotations

from rag_llm.observability.events import configure_logging, get_logger, redact_secrets

__all__ = ["configure_logging", "get_logger", "redact_secrets"]
