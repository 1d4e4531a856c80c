"""Async sources of the call layer; ``rag_llm.calls._sync`` is generated from them."""
