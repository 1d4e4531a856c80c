"""An embedder whose every call :data:`~rag_llm.observability.work.WORK` counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag_llm.observability.work import WORK, Where
from rag_llm.providers import Embedder

__all__ = ["RecordedEmbedder"]


class RecordedEmbedder:
    """``embedder``, its calls counted under ``label``: local (in this process) or remote.

    Every other attribute (``config``, ``count_tokens``, limits) is the embedder's own.
    """

    def __init__(self, embedder: Embedder, label: str) -> None:
        self.wrapped = embedder
        self.name = embedder.name
        self._label = label
        # A pooled provider sends its calls through a router; in-process models have none.
        self._where: Where = "remote" if hasattr(embedder, "router") else "local"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"<RecordedEmbedder {self.wrapped!r}>"

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
        with WORK.embedding(self._label, self._where, 1 if isinstance(texts, str) else len(texts)):
            return await self.wrapped.aembed(texts)

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        with WORK.embedding(self._label, self._where, 1 if isinstance(texts, str) else len(texts)):
            return self.wrapped.embed(texts)

    async def aclose(self) -> None:
        await self.wrapped.aclose()

    def close(self) -> None:
        self.wrapped.close()
