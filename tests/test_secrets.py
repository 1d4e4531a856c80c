"""No API key ever reaches a repr, an error message, a traceback or a log line."""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from support import AZURE_KEY, BAD_CONFIGS, KEY, closed_port, config

from rag_llm.config import ProviderConfig, Secret, Settings
from rag_llm.errors import ConfigError, RagLLMError
from rag_llm.observability import configure_logging, get_logger, redact_secrets
from rag_llm.observability.events import REDACTED
from rag_llm.providers import create_provider
from rag_llm.testing import Fault, UpstreamServer

SECRETS = (KEY, AZURE_KEY)
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def error_texts(exc: BaseException) -> list[str]:
    """Everything an exception can show: str, repr, args and the chained traceback."""
    texts = [str(exc), repr(exc), repr(exc.args), *map(repr, vars(exc).values())]
    texts += traceback.format_exception(exc)
    return texts


def bad_config_errors() -> list[BaseException]:
    raised: list[BaseException] = []
    for _, kind, cfg, _, _ in BAD_CONFIGS:
        with pytest.raises(ConfigError) as info:
            create_provider(kind, cfg).close()
        raised.append(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={"RAG_LLM_EMBEDDING__MAX_CONNECTIONS": "abc",
                               "RAG_LLM_EMBEDDING__API_KEY": KEY, "OPENAI_API_KEY": KEY})
    raised.append(info.value)
    return raised


def upstream_errors(server: UpstreamServer) -> list[BaseException]:
    """Errors from every failure mode, including an upstream echoing the key."""
    echo = f"Incorrect API key provided: {KEY}. Header was 'Bearer {KEY}', api-key: {AZURE_KEY}"
    azure = config(type="azure", base_url=server.origin, api_version="2024-06-01",
                   api_key=AZURE_KEY, retry=False)
    faults = [
        Fault(status=401, body={"error": {"message": echo}}),
        Fault(status=429, headers={"retry-after": "1"}, body={"error": echo}),
        Fault(status=500, body={"detail": echo}),
        Fault(status=200, body={"data": echo}),
        Fault(action="reset", times=2),  # the first may hit a reused connection
    ]
    raised: list[BaseException] = []
    for cfg in (config(base_url=server.base_url, retry=False), azure):
        with create_provider("embedding", cfg) as provider:
            for fault in faults:
                server.add_fault(fault)
                with pytest.raises(RagLLMError) as info:
                    provider.embed(["x"])
                raised.append(info.value)
        with create_provider("llm", cfg) as llm:
            server.add_fault(Fault(status=401, body={"error": {"message": echo}}))
            with pytest.raises(RagLLMError) as info:
                list(llm.stream(HELLO))
            raised.append(info.value)
            server.add_fault(Fault(action="truncate_stream"))
            with pytest.raises(RagLLMError) as info:
                list(llm.stream(HELLO))
            raised.append(info.value)
    for cfg in (config(base_url=f"http://127.0.0.1:{closed_port()}/v1"),
                config(base_url=server.base_url, read_timeout=0.1)):
        server.delay = 0.5
        with create_provider("embedding", cfg) as provider, \
                pytest.raises(RagLLMError) as info:
            provider.embed(["x"])
        raised.append(info.value)
    server.delay = 0.0
    return raised


async def async_upstream_errors(server: UpstreamServer) -> list[BaseException]:
    server.add_fault(Fault(status=403, body={"error": {"message": f"Bearer {KEY}"}}))
    raised: list[BaseException] = []
    async with create_provider("embedding", config(base_url=server.base_url)) as provider:
        with pytest.raises(RagLLMError) as info:
            await provider.aembed(["x"])
        raised.append(info.value)
    return raised


def exercise(server: UpstreamServer, tmp_path: Path) -> list[str]:
    """Drive the library with the key; return every text it produced outside the logs."""
    config_file = tmp_path / "rag.toml"
    config_file.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "m"\napi_key = "{KEY}"\n'
        f'base_url = "{server.base_url}"\n', encoding="utf-8")
    settings = Settings.load(config_file, environ={"OPENAI_API_KEY": KEY})
    texts = [repr(settings), str(settings)]
    for cfg in (settings.providers["embedding"],
                config(type="azure", base_url=server.origin, api_version="v", api_key=AZURE_KEY,
                       headers={"X-Api-Key": AZURE_KEY})):
        provider_config = ProviderConfig.from_mapping(cfg)
        texts += [repr(provider_config), str(provider_config), repr(provider_config.api_key)]
        with create_provider("embedding", cfg) as provider:
            assert provider.embed(["ok"]) == [server.expected_embedding("ok")]
            texts += [repr(provider), str(provider), repr(provider.pool),
                      repr(provider.pool_stats())]
    errors = bad_config_errors() + upstream_errors(server)
    errors += asyncio.run(async_upstream_errors(server))
    for exc in errors:
        texts += error_texts(exc)
    log = get_logger()
    for exc in errors:
        log.error("call_failed", error=str(exc), exc_info=exc)
    log.warning("request_sent", api_key=KEY, authorization=f"Bearer {KEY}",
                headers={"Authorization": f"Bearer {KEY}", "api-key": AZURE_KEY},
                secret=Secret(KEY), note=f"retrying with {KEY}")
    return texts


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_key_never_appears_in_reprs_errors_or_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json")
    # configure_logging caches loggers on first use; keep them from binding this test's
    # captured stderr for good.
    structlog.configure(cache_logger_on_first_use=False)
    with UpstreamServer() as server:  # accepts any key; the headers are checked below
        texts = exercise(server, tmp_path)
        with capture_logs() as raw_events:
            with create_provider("llm", config(base_url=server.base_url)) as llm:
                assert "".join(llm.stream(HELLO)) == llm.chat(HELLO)
            for exc in upstream_errors(server):
                texts += error_texts(exc)
    assert server.requests, "the upstream saw requests"
    for request in server.requests:  # the keys did travel, in their headers
        assert (request.headers.get("authorization") == f"Bearer {KEY}"
                or request.headers.get("api-key") == AZURE_KEY)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.err.splitlines()]
    events = {line["event"] for line in lines}
    assert {"connection_pool_created", "provider_closed", "call_failed", "request_sent"} <= events
    assert any("exception" in line for line in lines)
    assert REDACTED in captured.err
    assert any(f"provided: {REDACTED}" in text for text in texts), "the echo was scrubbed"
    assert {e["event"] for e in raw_events} >= {"connection_pool_created", "provider_closed"}
    for text in [*texts, captured.out, captured.err, repr(raw_events)]:
        assert_no_secret(text)


def test_base_url_with_key_in_query_never_leaks() -> None:
    url = f"https://example.invalid/v1?api_key={KEY}"
    try:
        provider = create_provider("embedding", config(base_url=url))
    except ConfigError as exc:
        assert_no_secret(str(exc))
        return
    with provider:
        assert_no_secret(repr(provider))
        assert_no_secret(repr(provider.config))


def test_redact_secrets_blanks_credential_keys_and_text() -> None:
    event: dict[str, Any] = {
        "event": "request_sent",
        "api_key": KEY,
        "API-KEY": AZURE_KEY,
        "Authorization": f"Bearer {KEY}",
        "password": "hunter2",
        "headers": {"authorization": "Bearer abc.def", "x-api-key": AZURE_KEY,
                    "accept": "application/json"},
        "note": f"upstream said: bad key {KEY}",
        "bearer": "sent Bearer tok_123.xyz today",
        "items": [f"key={KEY}", ("sk-abcdef123456", 3)],
        "header_line": f"api-key: {AZURE_KEY}",
        "count": 3,
        "provider": "openai",
        "exc_info": True,
    }
    out = redact_secrets(None, "info", dict(event))
    for key in ("api_key", "API-KEY", "Authorization", "password"):
        assert out[key] == REDACTED
    assert out["headers"] == {"authorization": REDACTED, "x-api-key": REDACTED,
                              "accept": "application/json"}
    assert out["note"] == f"upstream said: bad key {REDACTED}"
    assert out["bearer"] == f"sent {REDACTED} today"
    assert out["items"] == [f"key={REDACTED}", (REDACTED, 3)]
    assert out["header_line"] == REDACTED
    assert (out["event"], out["count"], out["provider"], out["exc_info"]) == (
        "request_sent", 3, "openai", True)
    assert_no_secret(repr(out))
    assert "hunter2" not in repr(out)
    assert "tok_123" not in repr(out)


def test_redact_secrets_leaves_ordinary_events_alone() -> None:
    event = {"event": "connection_pool_created", "provider": "emb", "max_connections": 100,
             "keepalive_expiry": 30.0, "client": "sync"}
    assert redact_secrets(None, "info", dict(event)) == event
