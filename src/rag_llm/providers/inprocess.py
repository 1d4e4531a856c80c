"""What every in-process embedder shares: a lazily loaded model, one encode at a time, close.

Subclasses implement ``_load`` (build the model; called under the lock on first use),
``_encode`` (unit-length vectors of a non-empty list of texts), ``_dimensions`` and
``_count_tokens``. The model loads in a worker thread for ``aembed``, like every encode.

After an encode of several texts, the memory it freed goes back to the system
(:func:`rag_llm._malloc.trim`): glibc would otherwise keep a large batch's activations, and
a service that ingested once would hold hundreds of MiB it no longer uses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from rag_llm import _malloc
from rag_llm.errors import ProviderClosedError
from rag_llm.observability.events import get_logger
from rag_llm.providers.base import as_texts

__all__ = ["InProcessEmbedder"]

_log = get_logger()


class InProcessEmbedder:
    """An :class:`~rag_llm.providers.Embedder` whose model runs in this process.

    One encode runs at a time (a lock): the runtime already spreads each batch over the
    cores, and tokenizers are not safe to share between threads.
    """

    kind = "embedding"
    # The ingestion pipeline sends this many batches at once; more would only queue here.
    max_concurrency = 1
    backend: ClassVar[str] = "?"

    def __init__(self, model: str, *, name: str, batch_size: int) -> None:
        self.name = name
        self.model = model
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._model: Any = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "loaded" if self._model is not None else "unloaded"
        return f"<{type(self).__name__} name={self.name!r} model={self.model!r} {state}>"

    def _load(self) -> Any:
        raise NotImplementedError

    def _encode(self, model: Any, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def _dimensions(self, model: Any) -> int:
        raise NotImplementedError

    def _count_tokens(self, model: Any, text: str) -> int:
        raise NotImplementedError

    def _loaded(self) -> Any:
        """The model, loaded under the lock on first use."""
        if self._closed:
            raise ProviderClosedError(f"{self!r} is closed")
        if self._model is None:
            self._model = self._load()
            _log.info("local_model_loaded", provider=self.name, model=self.model,
                      backend=self.backend, dimensions=self._dimensions(self._model))
        return self._model

    @property
    def dimensions(self) -> int:
        with self._lock:
            return self._dimensions(self._loaded())

    def count_tokens(self, text: str) -> int:
        """Subword tokens of ``text`` under the model's tokenizer, without special tokens."""
        with self._lock:
            return self._count_tokens(self._loaded(), text)

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        """Unit-length vectors of ``texts``, in order."""
        items = as_texts(texts)
        if not items:
            return []
        with self._lock:
            vectors = self._encode(self._loaded(), items)
            if len(items) > 1:  # a single query's text frees little
                _malloc.trim()
            return vectors

    async def aembed(self, texts: Sequence[str] | str) -> list[list[float]]:
        """:meth:`embed` in a worker thread, so the event loop keeps serving."""
        return await asyncio.to_thread(self.embed, texts)

    def close(self) -> None:
        """Release the model; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._model = None
                _log.info("provider_closed", provider=self.name, kind=self.kind)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
