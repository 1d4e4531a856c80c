from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import BAD_CONFIGS, DROP, KEY, config

from rag_llm.config import PoolLimits, ProviderConfig, Secret, Settings, Timeouts
from rag_llm.errors import ConfigError, RagLLMError
from rag_llm.providers import create_provider

TOML = """
[logging]
format = "json"
level = "debug"

[providers.embedding]
type = "openai"
model = "text-embedding-3-small"
base_url = "http://127.0.0.1:8001/v1"
max_connections = 40
max_keepalive_connections = 10

[providers.llm]
type = "vllm"
model = "gpt-4o-mini"
"""

YAML = """
logging:
  format: console
providers:
  llm:
    type: ollama
    model: gpt-4o-mini
    keepalive_expiry: 12.5
    http2: false
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_documented_pool_limits() -> None:
    cfg = ProviderConfig.from_mapping(config())
    assert cfg.limits == PoolLimits()
    assert cfg.limits.max_keepalive_connections == 20
    assert cfg.limits.max_connections == 100
    assert cfg.limits.keepalive_expiry == 30.0
    assert 0 < cfg.timeouts.pool <= 10
    assert cfg.http2 is False
    assert cfg.verify is True
    assert cfg.transport == "auto"  # aiohttp for async, httpx2 for sync


@pytest.mark.parametrize("limits", [
    {},
    {"max_keepalive_connections": 5, "max_connections": 7, "keepalive_expiry": 1.5},
    {"max_keepalive_connections": 0, "max_connections": 1, "keepalive_expiry": 0},
])
def test_provider_exposes_pool_limits_from_config(limits: dict[str, Any]) -> None:
    with create_provider("embedding", config(**limits)) as provider:
        expected = provider.config.limits
        assert provider.max_keepalive_connections == expected.max_keepalive_connections
        assert provider.max_connections == expected.max_connections
        assert provider.keepalive_expiry == expected.keepalive_expiry
        for name, value in limits.items():
            assert getattr(provider, name) == value
        snapshot = provider.pool_stats()
        assert snapshot.max_connections == expected.max_connections
        assert snapshot.max_keepalive_connections == expected.max_keepalive_connections


def test_timeouts_and_flags_are_read_from_config() -> None:
    cfg = ProviderConfig.from_mapping(config(
        connect_timeout=1, read_timeout=2.5, write_timeout=3, pool_timeout=0.5,
        dimensions=256, name="emb", headers={"X-Team": "search"},
    ))
    assert cfg.timeouts == Timeouts(connect=1, read=2.5, write=3, pool=0.5)
    assert (cfg.dimensions, cfg.name, dict(cfg.headers)) == (256, "emb", {"X-Team": "search"})


@pytest.mark.parametrize(
    ("kind", "cfg", "field", "shown"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS],
)
def test_bad_config_raises_config_error_naming_field_and_value(
    kind: str, cfg: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        create_provider(kind, cfg).close()
    exc = info.value
    assert exc.field == field
    assert field in str(exc)
    assert shown in str(exc)
    assert isinstance(exc, RagLLMError)
    assert isinstance(exc, ValueError)
    for text in (str(exc), repr(exc), repr(exc.value), exc.reason):
        assert KEY not in text


@pytest.mark.parametrize(("name", "value"), [
    ("connect_timeout", 0), ("read_timeout", -1), ("pool_timeout", "5"),
    ("keepalive_expiry", float("inf")), ("dimensions", 0), ("http2", "yes"),
    ("transport", "requests"), ("headers", {"Authorization": 1}), ("model", "  "),
])
def test_other_bad_values_raise_config_error(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        ProviderConfig.from_mapping(config(**{name: value}))
    assert name in str(info.value)
    assert KEY not in str(info.value)


def test_settings_load_toml(tmp_path: Path) -> None:
    settings = Settings.load(write(tmp_path, "rag.toml", TOML), environ={})
    assert (settings.log_format, settings.log_level) == ("json", "debug")
    embedding = settings.provider("embedding")
    assert embedding is not None
    assert embedding["max_connections"] == 40
    with create_provider("embedding", embedding) as provider:
        assert (provider.max_connections, provider.max_keepalive_connections) == (40, 10)
    with create_provider("llm", settings.providers["llm"]) as provider:
        assert provider.config.base_url == "http://127.0.0.1:8000/v1"  # vllm default


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_settings_load_yaml(tmp_path: Path, suffix: str) -> None:
    settings = Settings.load(write(tmp_path, "rag" + suffix, YAML), environ={})
    assert settings.log_format == "console"
    llm = settings.provider("llm")
    assert llm is not None
    with create_provider("llm", llm) as provider:
        assert provider.keepalive_expiry == 12.5
    assert settings.provider("embedding") is None


def test_settings_path_from_rag_llm_config_env(tmp_path: Path) -> None:
    path = write(tmp_path, "rag.toml", TOML)
    settings = Settings.load(environ={"RAG_LLM_CONFIG": str(path)})
    assert sorted(settings.providers) == ["embedding", "llm"]


def test_environment_overrides_file_and_is_coerced(tmp_path: Path) -> None:
    environ = {
        "RAG_LLM_EMBEDDING__MAX_CONNECTIONS": "50",
        "RAG_LLM_EMBEDDING__KEEPALIVE_EXPIRY": "7.5",
        "RAG_LLM_EMBEDDING__HTTP2": "false",
        "RAG_LLM_LLM__MODEL": "other-model",
        "RAG_LLM_LOG_LEVEL": "warning",
        "UNRELATED": "x",
    }
    settings = Settings.load(write(tmp_path, "rag.toml", TOML), environ=environ)
    embedding = settings.providers["embedding"]
    assert embedding["max_connections"] == 50
    assert type(embedding["max_connections"]) is int
    assert embedding["keepalive_expiry"] == 7.5
    assert embedding["http2"] is False
    assert settings.providers["llm"]["model"] == "other-model"
    assert settings.log_level == "warning"
    with create_provider("embedding", embedding) as provider:
        assert provider.max_connections == 50


def test_environment_alone_defines_a_provider() -> None:
    settings = Settings.load(environ={
        "RAG_LLM_EMBEDDING__TYPE": "tei",
        "RAG_LLM_EMBEDDING__MODEL": "bge-small",
    })
    with create_provider("embedding", settings.providers["embedding"]) as provider:
        assert provider.config.base_url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(("name", "raw"), [
    ("RAG_LLM_EMBEDDING__MAX_CONNECTIONS", "abc"),
    ("RAG_LLM_EMBEDDING__KEEPALIVE_EXPIRY", "soon"),
    ("RAG_LLM_EMBEDDING__HTTP2", "maybe"),
])
def test_bad_environment_value_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={name: raw, "OPENAI_API_KEY": KEY})
    assert info.value.field == name
    assert raw in str(info.value)
    assert KEY not in str(info.value)


def test_openai_api_key_env_fills_openai_providers_only(tmp_path: Path) -> None:
    settings = Settings.load(write(tmp_path, "rag.toml", TOML), environ={"OPENAI_API_KEY": KEY})
    assert settings.providers["embedding"]["api_key"] == Secret(KEY)
    assert "api_key" not in settings.providers["llm"]  # type vllm
    with create_provider("embedding", settings.providers["embedding"]) as provider:
        assert provider.config.api_key is not None
        assert provider.config.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings)
    assert KEY not in str(settings)


def test_openai_api_key_env_does_not_override_configured_key(tmp_path: Path) -> None:
    path = write(tmp_path, "rag.toml", TOML.replace('type = "openai"',
                                                     'type = "openai"\napi_key = "sk-file"'))
    settings = Settings.load(path, environ={"OPENAI_API_KEY": KEY})
    assert settings.providers["embedding"]["api_key"] == "sk-file"


@pytest.mark.parametrize(("name", "text", "reason"), [
    ("rag.json", "{}", "must end in"),
    ("rag.toml", "providers = [", "is not valid"),
    ("rag.toml", "providers = 3", "providers"),
    ("rag.yaml", "providers: [unclosed", "is not valid"),
    ("rag.yaml", "- just\n- a list\n", "providers"),
])
def test_bad_config_file_raises_config_error(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        Settings.load(path, environ={})
    assert info.value.field == "config_file"
    assert str(path) in str(info.value)
    assert reason in str(info.value)


def test_unreadable_config_file_raises_config_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path):
        with pytest.raises(ConfigError) as info:
            Settings.load(path, environ={})
        assert info.value.field == "config_file"
        assert "cannot be read" in str(info.value)


@pytest.mark.parametrize(("name", "value"), [("log_format", "xml"), ("log_level", "loud")])
def test_bad_logging_settings_raise_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**{name: value})
    assert info.value.field == name
    assert value in str(info.value)


def test_settings_and_config_reprs_hold_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "rag.toml", TOML.replace('type = "openai"',
                                                     f'type = "openai"\napi_key = "{KEY}"'))
    settings = Settings.load(path, environ={"OPENAI_API_KEY": KEY})
    cfg = ProviderConfig.from_mapping(settings.providers["embedding"])
    for text in (repr(settings), str(settings), repr(cfg), str(cfg), f"{cfg.api_key}"):
        assert KEY not in text


def test_secret_repr_and_str_hide_the_value() -> None:
    secret = Secret(KEY)
    for text in (repr(secret), str(secret), f"{secret}", format(secret), f"{secret!r}",
                 repr([secret]), repr({"k": secret})):
        assert KEY not in text
        assert "*" in text
    assert secret.get_secret_value() == KEY
    assert secret == Secret(KEY)
    assert secret != Secret("other")
    assert secret != KEY
    assert bool(secret)
    assert not Secret("")


# -- one validation for every way a config is built -------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("base_url", "not a url"),
    ("base_url", "ftp//nowhere"),
    ("model", ""),
    ("transport", "carrier-pigeon"),
    ("max_batch_size", 0),
    ("http2", "yes"),
])
def test_the_constructor_refuses_what_from_mapping_refuses(field: str, value: object) -> None:
    base: dict[str, Any] = {"type": "openai", "model": "m", "name": "p",
                            "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(ConfigError) as built:
        ProviderConfig(**{**base, field: value})
    with pytest.raises(ConfigError) as mapped:
        ProviderConfig.from_mapping({**base, field: value})
    assert built.value.field == mapped.value.field == field


def test_an_unknown_key_names_the_closest_known_one() -> None:
    with pytest.raises(ConfigError) as info:
        ProviderConfig.from_mapping(config(max_conections=50))
    assert info.value.field == "max_conections"
    assert "did you mean `max_connections`?" in str(info.value)
    assert "50" not in str(info.value)  # a misspelt api_key must not show either


def test_an_unknown_key_in_a_section_or_endpoint_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"retry\.max_atempts: .*`max_attempts`"):
        ProviderConfig.from_mapping(config(retry={"max_atempts": 2}))
    endpoints = [{"base_url": "http://127.0.0.1:9/v1", "wieght": 2}]
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.wieght: .*`weight`"):
        ProviderConfig.from_mapping(config(endpoints=endpoints, base_url=DROP))


def test_keep_alive_follows_a_smaller_max_connections() -> None:
    with create_provider("embedding", config(max_connections=5)) as provider:
        assert provider.max_keepalive_connections == 5
    assert PoolLimits(max_connections=50).max_keepalive_connections == 20
    with pytest.raises(ConfigError, match="must not exceed max_connections=5"):
        create_provider("embedding", config(max_connections=5, max_keepalive_connections=20))


def _locator_error(tmp_path: Path, table: str, environ: dict[str, str]) -> ConfigError:
    from rag_llm.locator import ServiceLocator

    path = tmp_path / "rag-llm.toml"
    path.write_text('[providers.embedding]\ntype = "openai"\nmodel = "m"\n'
                    f'base_url = "http://127.0.0.1:9/v1"\napi_key = "{KEY}"\n{table}')
    locator = ServiceLocator(Settings.load(path, environ=environ))
    with pytest.raises(ConfigError) as info:
        locator.build_all()
    assert KEY not in str(info.value)
    return info.value


def test_a_bad_file_value_is_named_by_its_table(tmp_path: Path) -> None:
    error = _locator_error(tmp_path, "max_conections = 50\n", {})
    assert str(error) == ("providers.embedding.max_conections: is not a known setting; "
                          "did you mean `max_connections`?")
    error = _locator_error(tmp_path, "max_connections = -1\n", {})
    assert error.field == "providers.embedding.max_connections"


def test_an_unknown_variable_is_named_with_the_one_it_was_meant_to_be(tmp_path: Path) -> None:
    error = _locator_error(tmp_path, "", {"RAG_LLM_EMBEDDING__MAX_CONECTIONS": "5"})
    assert error.field == "RAG_LLM_EMBEDDING__MAX_CONECTIONS"
    assert "did you mean RAG_LLM_EMBEDDING__MAX_CONNECTIONS?" in str(error)
    error = _locator_error(tmp_path, "", {"RAG_LLM_EMBEDDING__MAX_CONNECTIONS": "0"})
    assert error.field == "RAG_LLM_EMBEDDING__MAX_CONNECTIONS"


def test_an_unknown_table_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rag-llm.toml"
    path.write_text('[provider.embedding]\ntype = "openai"\n')
    with pytest.raises(ConfigError, match=r"did you mean \[providers\]\?"):
        Settings.load(path, environ={})


def test_settings_remember_where_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "rag-llm.toml"
    path.write_text('[providers.embedding]\ntype = "openai"\nmodel = "m"\n')
    settings = Settings.load(path, environ={"RAG_LLM_EMBEDDING__MAX_CONNECTIONS": "7",
                                            "OPENAI_API_KEY": KEY})
    assert settings.source("embedding", "model") == f"file {path}"
    assert settings.source("embedding", "max_connections") == (
        "environment RAG_LLM_EMBEDDING__MAX_CONNECTIONS")
    assert settings.source("embedding", "api_key") == "environment OPENAI_API_KEY"
    assert settings.source("embedding", "keepalive_expiry") == "default"
