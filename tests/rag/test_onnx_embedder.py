"""The local embedder's vectors: pinned against sentence-transformers, on both backends.

The reference is sentence-transformers' all-MiniLM-L6-v2 (torch, fp32): the first 8 of the
384 dimensions of three texts, and their pairwise cosines. The onnx backend runs fp16
weights (int8 embedding tables), so it is held to their tolerance; benchmarks/embedder_quality.py
measures the whole agreement over 1,200 passages.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_llm import _malloc
from rag_llm.errors import ConfigError
from rag_llm.providers import onnx
from rag_llm.providers.inprocess import InProcessEmbedder
from rag_llm.providers.local import create_local_provider

np = pytest.importorskip("numpy")

TEXTS = ["How much pressure does an espresso machine use?", "Honeybees swarm in late spring.",
         "Überraschung: café naïve 東京 " + "word " * 300]  # the last one past 256 wordpieces
HEADS = [[-0.027, 0.0212, -0.0875, 0.0019, -0.0238, -0.0631, 0.0102, 0.0309],
         [0.0327, -0.0161, -0.0069, 0.0001, 0.0118, -0.0054, -0.0544, -0.0851],
         [0.0204, -0.056, 0.0152, 0.0415, -0.011, -0.0149, 0.0386, -0.0356]]
COSINES = [[1.0, -0.0072, 0.1396], [-0.0072, 1.0, 0.0199], [0.1396, 0.0199, 1.0]]
# Largest differences from the reference, against its 4-digit rounding: fp16 and int8 weights
# (seen: 0.0011 and 0.0007).
TOLERANCE = {"onnx": (2.5e-3, 1.5e-3), "torch": (1e-4, 1e-4)}
_NEEDS = {"onnx": "onnxruntime", "torch": "sentence_transformers"}


@pytest.fixture(scope="module", params=["onnx", "torch"])
def embedder(request: pytest.FixtureRequest) -> Iterator[InProcessEmbedder]:
    backend = request.param
    if importlib.util.find_spec(_NEEDS[backend]) is None:
        pytest.skip(f"the {backend} backend is not installed")
    provider = create_local_provider("embedding", {"type": "local", "backend": backend,
                                                   "batch_size": 2})
    yield provider
    provider.close()


def test_vectors_match_sentence_transformers(embedder: InProcessEmbedder) -> None:
    vectors = np.asarray(embedder.embed(TEXTS))
    dims, cosines = TOLERANCE[embedder.backend]
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[:, :8], HEADS, atol=dims)
    np.testing.assert_allclose(vectors @ vectors.T, COSINES, atol=cosines)
    assert embedder.dimensions == 384


def test_order_survives_sorting_by_length_and_batching(embedder: InProcessEmbedder) -> None:
    texts = ["a", "a much longer text about the tide pools of the northern coast", "b c", ""]
    together = np.asarray(embedder.embed(texts))
    alone = np.asarray([embedder.embed(text)[0] for text in texts])
    # Padding to a batch's longest text moves a vector by rounding only.
    assert ((together * alone).sum(axis=1) > 0.99999).all()


def test_text_past_256_wordpieces_is_truncated(embedder: InProcessEmbedder) -> None:
    long = "espresso " * 300
    assert embedder.count_tokens(long) > 256  # counting does not truncate
    first, second = np.asarray(embedder.embed([long, long + " honeybees volcano sourdough"]))
    assert float(first @ second) > 0.9999


def test_an_onnx_directory_needs_a_model_and_a_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"tokenizer\.json") as caught:
        create_local_provider("embedding", {"type": "local", "backend": "onnx",
                                            "model": str(tmp_path)})
    assert caught.value.field == "model"


def test_a_changed_model_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(onnx, "_MODEL_SHA256", "0" * 64)
    provider = create_local_provider("embedding", {"type": "local", "backend": "onnx"})
    with pytest.raises(ConfigError, match="pinned"):
        provider.embed("text")


# In a fresh interpreter set up as the service is (one malloc arena), so that its RSS is the
# embedder's alone: what loading the default model adds, and what a 128-text batch in a
# worker thread leaves behind.
_MEMORY_PROBE = """
import asyncio, json
import numpy, onnxruntime, tokenizers
from rag_llm import _malloc
from rag_llm.providers.onnx import OnnxEmbedder

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

_malloc.one_arena()
embedder = OnnxEmbedder(batch_size=64)
before = rss()
embedder.embed("warm up")
_malloc.trim()
loaded = rss()
asyncio.run(embedder.aembed([" ".join(f"w{i}x{j}" for j in range(120)) for i in range(128)]))
print(json.dumps({"model": loaded - before, "batch": rss() - loaded}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_a_batch_freed_goes_back_and_the_tables_stay_int8() -> None:
    pytest.importorskip("onnxruntime")
    if _malloc._glibc() is None:
        pytest.skip("the C library is not glibc")
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True,
                          text=True, timeout=120, check=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    # Seen: the model 80 MiB (over 110 with fp32 copies of the embedding tables); the batch
    # leaves 4 MiB, and 20-450 MiB when the memory it freed is not given back.
    assert figures["model"] < 100, figures
    assert figures["batch"] < 16, figures
