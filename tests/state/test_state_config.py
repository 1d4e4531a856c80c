"""The state setting: validated when built, and its password never shown."""

from __future__ import annotations

import logging

import pytest
import structlog

from rag_llm import ProviderConfig, Settings, create_provider
from rag_llm.config import StateConfig
from rag_llm.config._report import provider_entries, render
from rag_llm.errors import ConfigError, StateUnavailableError
from rag_llm.observability import configure_logging

PASSWORD = "s3cr3t-pa55word"
URL = f"redis://:{PASSWORD}@127.0.0.1:1/0"
BASE = {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}


def test_a_url_a_mapping_or_memory() -> None:
    config = ProviderConfig.from_mapping({**BASE, "state": "rediss://cache:6380/2"})
    assert config.state == StateConfig("rediss://cache:6380/2")
    assert config.state.tls
    assert config.state.timeout == 0.05
    assert config.state.prefix == "rag-llm"
    config = ProviderConfig.from_mapping(
        {**BASE, "state": {"url": "redis://cache/0", "prefix": "svc", "timeout": 0.2}})
    assert config.state == StateConfig("redis://cache/0", "svc", 0.2)
    assert ProviderConfig.from_mapping({**BASE, "state": "memory"}).state is None
    assert ProviderConfig.from_mapping(BASE).state is None


@pytest.mark.parametrize(("value", "field", "reason"), [
    ("http://cache:6379/0", "state.url", "redis:// or rediss://"),
    ("redis://cache:6379/zero", "state.url", "database number"),
    ({"url": "redis://c/0", "prefx": "x"}, "state.prefx", "did you mean `prefix`"),
    ({"url": "redis://c/0", "timeout": 0}, "state.timeout", "> 0"),
    ({"url": "redis://c/0", "prefix": "a{b}"}, "state.prefix", "braces"),
    (5, "state", "must be a redis:// URL"),
])
def test_bad_state_settings_name_the_field(value: object, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ProviderConfig.from_mapping({**BASE, "state": value})
    assert caught.value.field == field
    assert reason in str(caught.value)


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("global_max_in_flight", 0, ">= 1"),
    ("lease_ttl", 0, ">= 0.1"),
    ("on_state_error", "ignore", "local, fail"),
    ("expected_instances", 0, ">= 1"),
    ("burst", 0, "> 0"),
    ("global_max_in_flite", 3, "did you mean `global_max_in_flight`"),
])
def test_bad_shared_limits_are_refused(key: str, value: object, reason: str) -> None:
    mapping = {**BASE, "requests_per_minute": 60, key: value}
    with pytest.raises(ConfigError) as caught:
        ProviderConfig.from_mapping(mapping)
    assert reason in str(caught.value)
    if key in ("global_max_in_flight", "lease_ttl", "on_state_error", "expected_instances"):
        with pytest.raises(ConfigError):  # the constructor checks as much as from_mapping
            ProviderConfig(type="openai", model="m", base_url=BASE["base_url"], name="n",
                           **{key: value})


def test_the_password_is_never_in_a_repr_an_error_or_the_report() -> None:
    config = ProviderConfig.from_mapping({**BASE, "state": URL})
    assert PASSWORD not in repr(config)
    assert PASSWORD not in repr(config.state)
    assert "redis://127.0.0.1:1/0" in repr(config.state)
    report = render([("providers.embedding",
                      [(k, v, "code") for k, v in provider_entries(config).items()])])
    assert PASSWORD not in report
    assert "redis://127.0.0.1:1/0" in report
    for bad in (f"http://:{PASSWORD}@h/0", f"redis://:{PASSWORD}@h/x", f"redis://:{PASSWORD}@h:x/0"):
        with pytest.raises(ConfigError) as caught:
            ProviderConfig.from_mapping({**BASE, "state": bad})
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(caught.value.value)
    settings = Settings(state={"url": URL})
    assert PASSWORD not in repr(settings)


def test_the_password_is_not_logged_when_redis_is_away(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    logging.getLogger().setLevel(logging.INFO)
    provider = create_provider("embedding", {**BASE, "state": {"url": URL, "timeout": 0.2},
                                             "requests_per_minute": 60,
                                             "on_state_error": "fail", "retry": False})
    try:
        with pytest.raises(StateUnavailableError) as caught:
            provider.embed("x")
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(caught.value)
        assert "redis://127.0.0.1:1/0" in str(caught.value)
    finally:
        provider.close()
    out = capsys.readouterr()
    assert "state_backend_unavailable" in out.out + out.err
    assert PASSWORD not in out.out + out.err
    structlog.reset_defaults()


def test_the_state_table_and_its_variables(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "rag-llm.toml"  # type: ignore[operator]
    path.write_text('[state]\nurl = "redis://cache:6379/0"\nprefix = "svc"\n\n'
                    '[providers.embedding]\ntype = "openai"\nmodel = "m"\n\n'
                    '[providers.llm]\ntype = "local"\nmodel = "x"\n')
    settings = Settings.load(path, environ={"RAG_LLM_STATE__TIMEOUT": "0.2"})
    assert settings.providers["embedding"]["state"] == {
        "url": "redis://cache:6379/0", "prefix": "svc", "timeout": 0.2}
    assert "state" not in settings.providers["llm"]  # an in-process model shares nothing
    config = ProviderConfig.from_mapping(settings.providers["embedding"],
                                         default_base_url="http://127.0.0.1:9/v1")
    assert config.state == StateConfig("redis://cache:6379/0", "svc", 0.2)
    settings = Settings.load(environ={"RAG_LLM_STATE__URL": "redis://env:6379/1",
                                      "RAG_LLM_EMBEDDING__TYPE": "openai"})
    assert settings.providers["embedding"]["state"] == {"url": "redis://env:6379/1"}
    assert settings.source("embedding", "state") == "environment RAG_LLM_STATE__URL"
    with pytest.raises(ConfigError, match="RAG_LLM_STATE__URL"):
        Settings.load(environ={"RAG_LLM_STATE__URL": "http://nope/0"})
    with pytest.raises(ConfigError, match="did you mean RAG_LLM_STATE__PREFIX"):
        Settings.load(environ={"RAG_LLM_STATE__PREFX": "x"})
    path.write_text('[state]\nurl = "redis://cache/0"\nprefx = "svc"\n')
    with pytest.raises(ConfigError, match="did you mean `prefix`"):
        Settings.load(path, environ={})
