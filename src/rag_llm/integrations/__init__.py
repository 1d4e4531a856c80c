"""rag-llm inside the frameworks users already write in.

Each module needs its framework, from an extra of its own, and imports it only when
imported itself: ``rag_llm.integrations.langchain`` (``rag-llm[langchain]``),
``rag_llm.integrations.llama_index`` (``rag-llm[llama-index]``) and
``rag_llm.integrations.openai`` (``rag-llm[openai]``).
"""
