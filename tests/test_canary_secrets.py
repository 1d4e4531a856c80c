"""Canary secrets, fresh each run, driven through everything a user can see: none shows.

An OpenAI-style key, an Azure-style key (no ``sk-`` prefix: only exact-value redaction
hides it), a credential in a configured header, a Redis password, a store password and the
service's own key go through calls that succeed, fail upstream (401, 429, 500, each body
echoing them), fail to connect, retry, trip and close a breaker, lose and regain the shared
state, and shut down; then through the HTTP API, ``rag-llm config check``, the service
announcement and the configuration's error paths. Every log line (structlog rendered and
raw, the standard library's at DEBUG), repr, exception (chain, notes, traceback), metric
and response body is searched for each canary's random part.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from statekit import BINARY, RedisServer, free_port
from support import closed_port

from rag_llm.api import create_app
from rag_llm.cli import main
from rag_llm.config import ProviderConfig, Secret, Settings
from rag_llm.errors import (
    CircuitOpenError,
    ConfigError,
    ConnectError,
    RagLLMError,
    StateUnavailableError,
)
from rag_llm.locator import ServiceLocator
from rag_llm.metrics import render_metrics
from rag_llm.observability import configure_logging
from rag_llm.observability.events import REDACTED
from rag_llm.providers import create_provider
from rag_llm.rag import RagSettings
from rag_llm.remote import SERVICE_FILE, ServiceClient, announced
from rag_llm.state import live_backends
from rag_llm.testing import Fault, UpstreamServer

# The random part of each is what must never show; the prefixes only give them their shape.
MARKS = {name: secrets.token_hex(12) for name in
         ("key", "raw_key", "header", "redis", "wrong_redis", "store", "service")}
KEY = f"sk-canary-{MARKS['key']}"
RAW_KEY = MARKS["raw_key"]
HEADER = f"hdr-{MARKS['header']}"
REDIS_PASSWORD = f"canarypw{MARKS['redis']}"
STORE_PASSWORD = f"storepw{MARKS['store']}"
SERVICE_KEY = f"svc-canary-{MARKS['service']}"
HELLO = [{"role": "user", "content": "hi"}]
FAST_RETRY = {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.02}


def assert_clean(texts: list[str]) -> None:
    joined = "\n".join(texts)
    for name, mark in MARKS.items():
        assert mark not in joined, f"the {name} canary shows"


def error_texts(exc: BaseException) -> list[str]:
    """All an exception shows: str, repr, args, attributes and notes of it and of every
    exception chained to it (cause and context, suppressed or not), and its traceback."""
    texts = traceback.format_exception(exc)
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args),
                  *map(repr, getattr(current, "__dict__", {}).values()),
                  *getattr(current, "__notes__", ())]
        stack += [current.__cause__, current.__context__,
                  *getattr(current, "exceptions", ())]
    return texts


def raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call succeeded")


class Seen:
    """Everything the run put in front of a user, and the structlog events by name."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.raw_events: list[str] = []
        self.rendered = io.StringIO()  # the JSON lines, as configure_logging renders them

    def add(self, *texts: object) -> None:
        self.texts += [t if isinstance(t, str) else repr(t) for t in texts]

    def error(self, exc: BaseException) -> BaseException:
        self.texts += error_texts(exc)
        return exc

    def raw(self, logger: object, method: str,
            event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """First of the processors: the event as emitted, before any redaction, with its
        exception as a plain traceback (what a user's own structlog setup would print)."""
        self.raw_events.append(str(event_dict.get("event")))
        self.texts.append(repr(dict(event_dict)))
        exc_info = event_dict.get("exc_info")
        if isinstance(exc_info, BaseException):
            self.texts += error_texts(exc_info)
        return event_dict


@pytest.fixture
def seen(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    """JSON logs at debug with a raw-event tap in front, and the standard library's logs
    at DEBUG; when the test ends, every text gathered is searched for the canaries."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    found = Seen()
    configure_logging("json", "debug")
    # The service's own processors, writing to a buffer of the test's rather than to the
    # stderr of whichever capture phase is running.
    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[found.raw, *processors], cache_logger_on_first_use=False,
                        logger_factory=structlog.PrintLoggerFactory(file=found.rendered))
    caplog.set_level(logging.DEBUG)
    yield found
    captured = capsys.readouterr()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [formatter.format(record) for record in caplog.records]
    rendered = found.rendered.getvalue()
    assert_clean([*found.texts, rendered, captured.out, captured.err, *records])
    lines = [json.loads(line) for line in rendered.splitlines()]
    assert {line["event"] for line in lines} == set(found.raw_events), "all were rendered"


def openai_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": "openai", "model": "text-embedding-3-small", "base_url": server.base_url,
        "api_key": KEY, "headers": {"X-Subscription": HEADER}, "retry": False,
        "circuit_breaker": False, "retry_budget": False,
    }
    return {**config, **overrides}


def azure_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": "azure", "model": "emb", "base_url": server.origin, "api_version": "2024-06-01",
        "api_key": RAW_KEY, "headers": {"Ocp-Apim-Subscription-Key": HEADER},
        "retry": False, "circuit_breaker": False, "retry_budget": False,
    }
    return {**config, **overrides}


def echoing(config: dict[str, Any], status: int, times: int = 1, path: str | None = None,
            **headers: str) -> Fault:
    """``times`` answers of ``status`` whose message repeats the secrets ``config`` sends,
    as an upstream that quotes the request it refuses."""
    key = config["api_key"]
    sent = "; ".join(f"{name}: {value}" for name, value in config.get("headers", {}).items())
    echo = f"Incorrect API key provided: {key}. Sent 'Bearer {key}', api-key {key}; {sent}"
    return Fault(status=status, times=times, path=path, headers=headers,
                 body={"error": {"message": echo}})


def test_calls_failures_retries_breaker_and_close_show_no_secret(
    seen: Seen, upstream: UpstreamServer
) -> None:
    configs = [openai_config(upstream), azure_config(upstream)]
    for config in configs:
        built = ProviderConfig.from_mapping(config)
        seen.add(config.get("type"), built, str(built), built.endpoints, built.api_key)
        with create_provider("embedding", config) as provider:
            seen.add(provider, str(provider), provider.pool, provider.pool_stats())
            assert provider.embed(["ok"]) == [upstream.expected_embedding("ok")]
            for status in (401, 403, 429, 500, 503):
                upstream.add_fault(echoing(config, status, **{"retry-after": "0"}))
                exc = seen.error(raised(lambda p=provider: p.embed(["x"])))
                assert REDACTED in str(exc), "the echoed key was blanked, not dropped"
        with create_provider("llm", {**config, "model": "gpt-4o-mini"}) as llm:
            assert "".join(llm.stream(HELLO)) == llm.chat(HELLO)
            upstream.add_fault(echoing(config, 401))
            seen.error(raised(lambda llm=llm: list(llm.stream(HELLO))))
            upstream.add_fault(Fault(action="truncate_stream"))
            seen.error(raised(lambda llm=llm: list(llm.stream(HELLO))))

    # Retries: two failures, then the answer; each retry is logged.
    retrying = openai_config(upstream, retry=FAST_RETRY)
    with create_provider("embedding", retrying) as provider:
        upstream.add_fault(echoing(retrying, 500, times=2))
        assert provider.embed(["again"]) == [upstream.expected_embedding("again")]
        upstream.add_fault(echoing(retrying, 503, times=3))
        exhausted = seen.error(raised(lambda: provider.embed(["x"])))
        assert any("not retried" in note for note in getattr(exhausted, "__notes__", ()))

    # Connect failures, retried, on a closed port.
    refused = {**openai_config(upstream, retry=FAST_RETRY),
               "base_url": f"http://127.0.0.1:{closed_port()}/v1"}
    with create_provider("embedding", refused) as provider:
        assert isinstance(seen.error(raised(lambda: provider.embed(["x"]))), ConnectError)

    # A breaker that opens after two failures, refuses, then closes on a good probe.
    breaker = {"consecutive_failures": 2, "open_duration": 0.2, "max_open_duration": 0.2}
    tripping = openai_config(upstream, circuit_breaker=breaker)
    with create_provider("embedding", tripping) as provider:
        upstream.add_fault(echoing(tripping, 500, times=2))
        for _ in range(2):
            seen.error(raised(lambda: provider.embed(["x"])))
        assert isinstance(seen.error(raised(lambda: provider.embed(["x"]))), CircuitOpenError)
        seen.add(render_metrics().decode())  # while it is open
        time.sleep(0.25)
        assert provider.embed(["back"]) == [upstream.expected_embedding("back")]
        seen.add(provider, provider.pool_stats())

    async def async_calls() -> None:
        for config in configs:
            async with create_provider("embedding", config) as provider:
                assert await provider.aembed(["ok"]) == [upstream.expected_embedding("ok")]
                upstream.add_fault(echoing(config, 401))
                try:
                    await provider.aembed(["x"])
                except RagLLMError as exc:
                    seen.error(exc)
                seen.add(provider, provider.pool_stats())

    asyncio.run(async_calls())
    metrics = render_metrics().decode()
    seen.add(metrics)

    assert "rag_llm_circuit_breaker_state" in metrics
    assert "rag_llm_retries" in metrics
    assert {"connection_pool_created", "retry_scheduled", "connection_pool_closed",
            "provider_closed"} <= set(seen.raw_events)
    sent = [request.headers for request in upstream.requests]
    assert any(h.get("authorization") == f"Bearer {KEY}" for h in sent), "the key travelled"
    assert any(h.get("x-subscription") == HEADER for h in sent)
    assert any(h.get("api-key") == RAW_KEY for h in sent)


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    """A redis-server of the test's own that refuses every command without the canary."""
    if BINARY is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="rag-llm-redis-") as workdir:
        server = RedisServer(free_port(), workdir, password=REDIS_PASSWORD)
        server.start()
        try:
            yield server
        finally:
            server.kill()


def test_shared_state_lost_and_regained_shows_no_password(
    seen: Seen, upstream: UpstreamServer, redis_with_password: RedisServer
) -> None:
    redis = redis_with_password
    state = {"url": redis.url, "timeout": 0.2, "prefix": f"canary-{secrets.token_hex(4)}"}
    shared = openai_config(upstream, state=state, global_max_in_flight=4,
                           requests_per_minute=60_000)
    strict = {**shared, "name": "strict", "on_state_error": "fail"}
    wrong = {**shared, "name": "wrong", "state": {**state, "url": redis.url.replace(
        REDIS_PASSWORD, f"wrong{MARKS['wrong_redis']}")}}
    settings = Settings.load(environ={"RAG_LLM_STATE__URL": redis.url,
                                      "RAG_LLM_EMBEDDING__TYPE": "openai",
                                      "RAG_LLM_EMBEDDING__MODEL": "m",
                                      "RAG_LLM_EMBEDDING__API_KEY": KEY})
    seen.add(settings, str(settings), ProviderConfig.from_mapping(shared).state)
    with create_provider("embedding", shared) as provider, \
            create_provider("embedding", strict) as fails, \
            create_provider("embedding", wrong) as refused:
        assert provider.embed(["a"]) == [upstream.expected_embedding("a")]
        assert redis.command("KEYS", f"{state['prefix']}:*") != b"*0\r\n", \
            "the limits live in Redis: the password was accepted"
        assert refused.embed(["a"]) == [upstream.expected_embedding("a")]  # local fallback
        seen.add(provider, provider.config, live_backends(), render_metrics().decode())
        redis.kill()
        assert provider.embed(["b"]) == [upstream.expected_embedding("b")]  # falls back
        down = seen.error(raised(lambda: fails.embed(["b"])))
        assert isinstance(down, StateUnavailableError)
        seen.add(render_metrics().decode(), live_backends())
        redis.start()
        time.sleep(1.1)  # the backend's cool-down before it is tried again
        assert provider.embed(["c"]) == [upstream.expected_embedding("c")]
        seen.add(render_metrics().decode())
    assert seen.raw_events.count("state_backend_unavailable") >= 2  # wrong password, then down
    assert "state_backend_recovered" in seen.raw_events
    assert "redis://127.0.0.1:" in str(down)


def test_http_api_shows_no_secret(seen: Seen, upstream: UpstreamServer, tmp_path: Path) -> None:
    away = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0"
    embedding = openai_config(upstream, state={"url": away, "timeout": 0.2})
    llm = azure_config(upstream, model="gpt-4o-mini")
    locator = ServiceLocator(Settings(providers={"embedding": embedding, "llm": llm}))
    rag = RagSettings(data_dir=tmp_path / "data", api_key=SERVICE_KEY)
    auth = {"Authorization": f"Bearer {SERVICE_KEY}"}
    ask = {"model": "embedding", "input": ["x"]}
    chat = {"model": "llm", "messages": HELLO}
    with TestClient(create_app(locator, rag_settings=rag)) as client:
        def get(path: str, **headers: str) -> Any:
            response = client.get(path, headers=headers)
            seen.add(response.text, dict(response.headers))
            return response

        def post(path: str, body: Any, fault: Fault | None = None) -> Any:
            if fault is not None:
                upstream.add_fault(fault)
            response = client.post(path, json=body, headers=auth)
            seen.add(response.text, dict(response.headers))
            return response

        def upload(name: str, fault: Fault | None = None) -> Any:
            if fault is not None:
                upstream.add_fault(fault)
            response = client.post("/v1/documents", headers=auth,
                                   files=[("files", (name, b"Sourdough proofs overnight."))])
            seen.add(response.text)
            return response

        assert post("/v1/embeddings", ask).status_code == 200
        assert post("/v1/chat/completions", chat).status_code == 200
        for status in (401, 429, 500):
            refused = post("/v1/embeddings", ask, echoing(embedding, status))
            assert refused.status_code >= 400
            assert REDACTED in refused.text
            assert post("/v1/chat/completions", chat,
                        echoing(llm, status)).status_code >= 400
        streamed = post("/v1/chat/completions", {**chat, "stream": True}, echoing(llm, 500))
        assert "error" in streamed.text
        assert upload("a.txt").status_code < 300
        assert upload("b.txt", echoing(embedding, 500)).status_code >= 400
        assert post("/v1/query", {"question": "why?"}, echoing(embedding, 401)).status_code == 502
        # The answer fails once its stream has begun: an SSE error event.
        failed = post("/v1/query", {"question": "why?", "stream": True},
                      echoing(llm, 500, path="chat/completions"))
        assert "event: error" in failed.text
        assert REDACTED in failed.text
        assert upstream.pending_faults == 0, "every fault was met"
        assert get("/v1/models", **auth).status_code == 200
        assert get("/v1/status", **auth).status_code == 200
        assert get("/v1/status", Authorization="Bearer sk-not-the-key").status_code == 401
        assert get("/v1/models", Authorization="Bearer sk-not-the-key").status_code == 401
        health = get("/health").json()
        assert set(health["providers"]) == {"embedding", "llm"}
        for path in ("/health/ready", "/dashboard", "/dashboard/data", "/openapi.json"):
            assert get(path).status_code in (200, 503), path
        metrics = get("/metrics").text
        assert "rag_llm_state_errors" in metrics  # the Redis away was noticed, and counted
    assert {"gateway_request_failed", "request_failed",
            "state_backend_unavailable"} <= set(seen.raw_events)


def write_config(tmp_path: Path, upstream: UpstreamServer) -> Path:
    path = tmp_path / "rag.toml"
    path.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "text-embedding-3-small"\n'
        f'base_url = "{upstream.base_url}"\nheaders = {{ X-Subscription = "{HEADER}" }}\n\n'
        f'[providers.llm]\ntype = "azure"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{upstream.origin}"\napi_version = "2024-06-01"\n\n'
        f'[rag]\nstore = "postgresql://rag:{STORE_PASSWORD}@127.0.0.1:{closed_port()}/rag"\n',
        encoding="utf-8")
    return path


def test_cli_and_service_file_show_no_secret(
    seen: Seen, upstream: UpstreamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, upstream)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("RAG_LLM_LLM__API_KEY", RAW_KEY)
    monkeypatch.setenv("RAG_LLM_STATE__URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0")
    monkeypatch.setenv("RAG_LLM_API_KEY", SERVICE_KEY)
    monkeypatch.setenv("RAG_LLM_LOG_LEVEL", "debug")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", str(path), "--data-dir", str(data_dir)])
        captured = capsys.readouterr()
        seen.add(captured.out, captured.err)
        return code, captured.out, captured.err

    code, report, _ = run("config", "check")
    assert code == 0
    assert report.count(f'api_key = "{REDACTED}"') >= 2  # embedding's and llm's, masked
    assert f'X-Subscription = "{REDACTED}"' in report
    assert "redis://127.0.0.1:1/0" in report
    assert "store_password" in report

    monkeypatch.setenv("RAG_LLM_EMBEDDING__MAX_CONNECTIONS", "abc")
    code, _, err = run("config", "check")
    assert code == 1
    assert "RAG_LLM_EMBEDDING__MAX_CONNECTIONS='abc'" in err
    monkeypatch.delenv("RAG_LLM_EMBEDDING__MAX_CONNECTIONS")

    monkeypatch.setenv("OPENAI_API_KEY", KEY + "\n")
    code, _, err = run("config", "check")
    assert code == 1
    assert "api_key" in err
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    code, _, err = run("documents", "--url", f"http://127.0.0.1:{closed_port()}")
    assert code == 1
    assert "no service answers" in err
    seen.add(ServiceClient(upstream.origin, SERVICE_KEY))

    with announced(data_dir, "0.0.0.0", 8123):
        announcement = (data_dir / SERVICE_FILE).read_text()
    seen.add(announcement)
    assert json.loads(announcement)["url"] == "http://127.0.0.1:8123"


def without_base_url(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "base_url"}


INVALID_KEYS = [KEY + "\n", KEY + "\r\nX-Injected: 1", KEY.replace("-", "\x00", 1),
                KEY + " ", f"sk-{MARKS['key']}é", "\t" + KEY]


@pytest.mark.parametrize("bad_key", INVALID_KEYS, ids=["newline", "crlf-header", "nul", "space",
                                                       "non-ascii", "tab"])
def test_an_invalid_key_is_refused_without_showing_it(
    seen: Seen, upstream: UpstreamServer, bad_key: str
) -> None:
    """A key no header can carry fails at construction, naming the field, never the key
    (a transport would refuse it at the first call, quoting the header it could not send)."""
    attempts: list[tuple[str, Callable[[], object]]] = [
        ("api_key", lambda: create_provider("embedding", openai_config(upstream,
                                                                       api_key=bad_key))),
        ("api_key", lambda: create_provider("embedding", azure_config(upstream,
                                                                      api_key=Secret(bad_key)))),
        ("endpoints[1].api_key", lambda: ProviderConfig.from_mapping(without_base_url(
            azure_config(upstream, endpoints=[{"base_url": upstream.origin},
                                              {"base_url": upstream.base_url,
                                               "api_key": bad_key}])))),
        ("providers.embedding.api_key", lambda: ServiceLocator(Settings.load(environ={
            "RAG_LLM_EMBEDDING__TYPE": "openai", "RAG_LLM_EMBEDDING__MODEL": "m",
            "RAG_LLM_EMBEDDING__BASE_URL": upstream.base_url,
            "OPENAI_API_KEY": bad_key})).build_all()),
        ("headers.X-Subscription", lambda: create_provider("embedding", openai_config(
            upstream, headers={"X-Subscription": bad_key}))),
    ]
    for field, attempt in attempts:
        if field.startswith("headers") and bad_key.strip(" \t") == KEY:
            continue  # blanks and tabs are fine in a header value
        exc = seen.error(raised(attempt))
        assert isinstance(exc, ConfigError), exc
        assert exc.field == field, exc
    assert not upstream.requests, "nothing was sent"


def test_a_bad_setting_beside_the_key_names_itself_not_the_key(
    seen: Seen, upstream: UpstreamServer, tmp_path: Path
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(f'[providers.embedding]\ntype = "openai"\nmodel = "m"\napi_key = "{KEY}"\n'
                    f'base_url = "{upstream.base_url}"\nmax_connections = -5\n', encoding="utf-8")
    env = {"RAG_LLM_EMBEDDING__TYPE": "openai", "RAG_LLM_EMBEDDING__MODEL": "m",
           "RAG_LLM_EMBEDDING__API_KEY": KEY, "OPENAI_API_KEY": KEY}
    cases: list[tuple[str, str, Callable[[], object]]] = [
        ("providers.embedding.max_connections", "-5",
         lambda: ServiceLocator(Settings.load(toml, environ={})).build_all()),
        ("RAG_LLM_EMBEDDING__MAX_CONNECTIONS", "'abc'", lambda: Settings.load(
            environ={**env, "RAG_LLM_EMBEDDING__MAX_CONNECTIONS": "abc"})),
        ("max_connections", "'ten'", lambda: create_provider(
            "embedding", openai_config(upstream, max_connections="ten"))),
        ("endpoints[0].weight", "0", lambda: ProviderConfig.from_mapping(without_base_url(
            azure_config(upstream, endpoints=[{"base_url": upstream.origin, "weight": 0}])))),
        ("state.url", "redis://127.0.0.1:x/0", lambda: create_provider(
            "embedding", openai_config(upstream, state=f"redis://:{REDIS_PASSWORD}@127.0.0.1:x/0"))),
        ("RAG_LLM_STATE__URL", "http://127.0.0.1/0", lambda: Settings.load(
            environ={**env, "RAG_LLM_STATE__URL": f"http://:{REDIS_PASSWORD}@127.0.0.1/0"})),
        ("base_url", "https://example.com/v1", lambda: create_provider(
            "embedding", openai_config(upstream, base_url=f"https://me:{KEY}@example.com/v1"))),
        ("base_url", "https://example.com/v1", lambda: create_provider(
            "embedding", openai_config(upstream, base_url=f"https://example.com/v1?key={KEY}"))),
        # A password with an unencoded / ? or # ends the host part early.
        *[("state.url", "redis://cache:6379/0", lambda c=c: create_provider(
            "embedding", openai_config(upstream, state=f"redis://:{c}{REDIS_PASSWORD}@cache"
                                                       ":6379/0"))) for c in "/?#"],
        ("base_url", "https://example.com/v1", lambda: create_provider(
            "embedding", openai_config(upstream, base_url=f"https://me:x/{KEY}@example.com/v1"))),
        ("base_url", "https://example.com/v1", lambda: ProviderConfig.from_mapping({
            **openai_config(upstream, base_url=f"https://:{KEY}/x@example.com/v1"),
            "endpoints": [{"base_url": upstream.base_url}]})),
        ("api_kee", "not a known setting", lambda: create_provider(
            "embedding", {**openai_config(upstream), "api_kee": KEY})),
    ]
    for field, shown, attempt in cases:
        exc = seen.error(raised(attempt))
        assert isinstance(exc, ConfigError), exc
        assert exc.field == field, exc
        assert shown in str(exc), exc


@pytest.mark.parametrize(("name", "text"), [
    ("unclosed.yaml", 'providers:\n  embedding:\n    type: openai\n    api_key: "{key}\n'),
    ("colon.yaml", "providers:\n  embedding:\n    api_key: {key}: x\n"),
    ("tab.yaml", "providers:\n  embedding:\n\tapi_key: {key}\n"),
    ("unclosed.toml", '[providers.embedding]\napi_key = "{key}\nmodel = "m"\n'),
    ("bare.toml", "[providers.embedding]\napi_key = {key}\n"),
], ids=["yaml-unclosed-quote", "yaml-stray-colon", "yaml-tab", "toml-unclosed-quote",
        "toml-bare-value"])
def test_a_malformed_file_names_its_place_not_its_lines(
    seen: Seen, tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text.format(key=KEY), encoding="utf-8")
    exc = seen.error(raised(lambda: Settings.load(path, environ={})))
    assert isinstance(exc, ConfigError)
    assert exc.field == "config_file"
    assert "is not valid" in str(exc), exc
    assert "(at line " in str(exc), "it says where"
