"""Sync call layer, generated from ``rag_llm.calls._async`` by ``scripts/unasync.py``."""
