"""RAG settings and provider defaults: from the config file and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_llm.config import Secret, Settings
from rag_llm.errors import ConfigError
from rag_llm.rag import RagSettings, resolve_settings

KEY = "sk-test-rag-0123456789"


def test_rag_table_and_environment_build_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "rag.toml"
    config.write_text('[rag]\ndata_dir = "/srv/rag"\nchunk_size = 300\napi_key = "s3cret"\n')
    settings = RagSettings.load(config, environ={"RAG_LLM_CHUNK_OVERLAP": "20",
                                                 "RAG_LLM_DATA_DIR": "/data"})
    assert settings.data_dir == Path("/data")
    assert (settings.chunk_size, settings.chunk_overlap, settings.top_k) == (300, 20, 5)
    assert settings.api_key == Secret("s3cret")
    assert "s3cret" not in repr(settings)
    assert RagSettings.load(environ={}) == RagSettings()


@pytest.mark.parametrize(("values", "field"), [
    ({"chunk_size": 8}, "chunk_size"),
    ({"chunk_overlap": 200}, "chunk_overlap"),
    ({"top_k": 0}, "top_k"),
    ({"embed_batch_size": "64"}, "embed_batch_size"),
    ({"max_upload_bytes": True}, "max_upload_bytes"),
])
def test_bad_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RagSettings(**values)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_unknown_keys_and_bad_environment_values_are_named(tmp_path: Path) -> None:
    config = tmp_path / "rag.yaml"
    config.write_text("rag:\n  chunk_sise: 100\n")
    with pytest.raises(ConfigError, match=r"rag\.chunk_sise"):
        RagSettings.load(config, environ={})
    with pytest.raises(ConfigError, match="'many'"):
        RagSettings.load(environ={"RAG_LLM_TOP_K": "many"})


def test_with_no_configuration_embeddings_are_local_and_there_is_no_chat() -> None:
    settings = resolve_settings(Settings(log_level="debug"), environ={})
    assert settings.providers == {"embedding": {"type": "local"}}
    assert settings.log_level == "debug"


def test_an_openai_key_switches_both_providers_to_openai() -> None:
    settings = resolve_settings(Settings(), environ={"OPENAI_API_KEY": KEY})
    embedding, llm = settings.provider("embedding"), settings.provider("llm")
    assert embedding == {"type": "openai", "model": "text-embedding-3-small",
                         "api_key": Secret(KEY)}
    assert llm == {"type": "openai", "model": "gpt-4o-mini", "api_key": Secret(KEY)}
    assert KEY not in repr(settings)


def test_an_openai_compatible_base_url_needs_no_key() -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1", "OPENAI_CHAT_MODEL": "llama"}
    settings = resolve_settings(Settings(), environ=env)
    assert settings.provider("llm") == {"type": "openai", "model": "llama",
                                        "base_url": "http://127.0.0.1:8000/v1"}


def test_configured_providers_win_and_partial_ones_are_completed() -> None:
    configured = Settings(providers={
        "embedding": {"type": "tei", "model": "bge-small"},
        "llm": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"},
    })
    settings = resolve_settings(configured, environ={"OPENAI_API_KEY": KEY})
    assert settings.provider("embedding") == {"type": "tei", "model": "bge-small"}
    assert settings.provider("llm") == {"type": "openai_compatible", "model": "m",
                                        "base_url": "http://127.0.0.1:8000/v1"}
