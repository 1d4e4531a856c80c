"""In-process embeddings on onnxruntime, tokenized by ``tokenizers``: no torch, no downloads.

The default model is all-MiniLM-L6-v2 (Apache-2.0, 384 dimensions) as a 33.5 MB ONNX file
shipped beside this module with the model's own ``tokenizer.json`` and checked against its
pinned sha256 when loaded. ``scripts/export_onnx.py --variant int8emb-fp16`` rebuilds it byte
for byte from the sentence-transformers weights: the embedding tables as int8 with a scale
per row, the encoder's weights as fp16 (int8 there moves the top 5 retrieved passages of
one query in ten). What sentence-transformers does around the transformer is done here the
same way: truncation at 256 wordpieces, texts sorted by length and padded per batch, mean
pooling over the attention mask, L2 normalisation. ``benchmarks/embedder_quality.py``
measures the agreement with sentence-transformers.

>>> emb = OnnxEmbedder()  # doctest: +SKIP
>>> len(emb.embed("hello")[0])  # doctest: +SKIP
384
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rag_llm.errors import ConfigError
from rag_llm.providers.inprocess import InProcessEmbedder

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_ONNX_MODEL", "MAX_SEQ_LENGTH", "OnnxEmbedder", "onnx_available"]

DEFAULT_ONNX_MODEL: Final = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH: Final = 256  # all-MiniLM-L6-v2's sentence_bert_config.json
_MODEL_DIR: Final = Path(__file__).resolve().parent / "minilm"
_MODEL_SHA256: Final = "e6c3cb624305bb5d70812d0ae38d6866fdbb7f25f80ff3eaa8351e3c3cc590f9"
_EXTRA_HINT: Final = "install the local extra: pip install 'rag-llm[local]'"


def onnx_available() -> bool:
    """Whether onnxruntime and tokenizers are installed (the ``local`` extra)."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("onnxruntime", "tokenizers", "numpy"))


def _usable_cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _files(model: str) -> tuple[Path, Path]:
    """The ONNX file and ``tokenizer.json`` of ``model``: the packaged default or a directory."""
    if model == DEFAULT_ONNX_MODEL:
        return _MODEL_DIR / "model.onnx", _MODEL_DIR / "tokenizer.json"
    root = Path(model)
    onnx_file = next((path for path in (root / "model.onnx", root / "onnx" / "model.onnx")
                      if path.is_file()), None)
    if onnx_file is None or not (root / "tokenizer.json").is_file():
        raise ConfigError("model", model, f"must be {DEFAULT_ONNX_MODEL!r} or a directory with "
                                          "model.onnx (or onnx/model.onnx) and tokenizer.json "
                                          "(no downloads)")
    return onnx_file, root / "tokenizer.json"


def _check_digest(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != _MODEL_SHA256:
        raise ConfigError("model", str(path), f"has sha256 {digest}, not the pinned "
                                              f"{_MODEL_SHA256}; reinstall rag-llm")


@dataclass(frozen=True, slots=True)
class _Model:
    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer, neither padding nor truncating
    specials: int  # tokens its post-processor adds to one text ([CLS] and [SEP])
    inputs: frozenset[str]
    output: str
    dimensions: int


class OnnxEmbedder(InProcessEmbedder):
    """An :class:`~rag_llm.providers.Embedder` that runs an ONNX sentence encoder.

    ``threads`` is onnxruntime's intra-op thread count (default: every CPU this process may
    use); ``device`` is ``"cpu"`` or ``"cuda"`` (onnxruntime-gpu's CUDA provider).
    """

    backend = "onnx"

    def __init__(self, model: str = DEFAULT_ONNX_MODEL, *, name: str = "local",
                 device: str = "cpu", batch_size: int = 32, threads: int | None = None) -> None:
        if not onnx_available():
            raise ConfigError("type", "local", f"needs onnxruntime and tokenizers; "
                                               f"{_EXTRA_HINT}")
        if device not in ("cpu", "cuda"):
            raise ConfigError("device", device, "must be 'cpu' or 'cuda' for the onnx backend")
        super().__init__(model, name=name, batch_size=batch_size)
        self.device = device
        self.threads = threads or _usable_cpus()
        self._onnx_file, self._tokenizer_file = _files(model)

    def _load(self) -> _Model:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if self.model == DEFAULT_ONNX_MODEL:
            _check_digest(self._onnx_file)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning between batches: the event loop and the
        # other workers on the machine get those cores back.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Every batch has its own shape: an arena would keep the largest one's memory for good.
        options.enable_cpu_mem_arena = False
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("device", "cuda", "needs onnxruntime-gpu with CUDA")
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(self._onnx_file), options, providers=providers)
        tokenizer = Tokenizer.from_file(str(self._tokenizer_file))
        tokenizer.no_padding()  # padded here, per batch, to the batch's longest text
        tokenizer.no_truncation()  # truncated in _encode: count_tokens counts every token
        output = session.get_outputs()[0]
        width = output.shape[-1]
        return _Model(session=session, tokenizer=tokenizer,
                      specials=tokenizer.num_special_tokens_to_add(False),
                      inputs=frozenset(i.name for i in session.get_inputs()),
                      output=output.name,
                      dimensions=width if isinstance(width, int) else -1)

    def _dimensions(self, model: _Model) -> int:
        if model.dimensions > 0:
            return model.dimensions
        return len(self._encode(model, [""])[0])

    def _count_tokens(self, model: _Model, text: str) -> int:
        return len(model.tokenizer.encode(text, add_special_tokens=False).ids)

    def _run(self, model: _Model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled, unit-length embeddings of one padded batch."""
        import numpy as np

        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in model.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = model.session.run([model.output], feeds)[0]
        weights = mask.astype(np.float32)[..., None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray = pooled / np.maximum(norms, 1e-12)
        return result

    def _encode(self, model: _Model, texts: list[str]) -> list[list[float]]:
        import numpy as np

        # What the tokenizer's own truncation does, on the one tokenizer count_tokens uses:
        # the wordpieces cut to leave room for the special tokens, then those added.
        encodings = model.tokenizer.encode_batch(texts, add_special_tokens=False)
        for encoding in encodings:
            encoding.truncate(MAX_SEQ_LENGTH - model.specials)
        encodings = [model.tokenizer.post_process(encoding) for encoding in encodings]
        lengths = [len(encoding.ids) for encoding in encodings]
        # Longest first, as sentence-transformers does: batches of similar lengths pad least.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        vectors = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(lengths[i] for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                ids[row, :lengths[index]] = encodings[index].ids
                mask[row, :lengths[index]] = 1
            pooled = self._run(model, ids, mask)
            if vectors.shape[1] == 0:
                vectors = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            vectors[batch] = pooled
        result: list[list[float]] = vectors.tolist()
        return result
