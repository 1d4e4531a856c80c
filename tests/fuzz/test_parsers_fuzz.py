"""Property tests: whatever the wire or the configuration holds, rag-llm answers with its
own typed errors (or the right value), names the provider, and never shows a secret."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag_llm import errors
from rag_llm.adapters._errors import parse_retry_after, upstream_error
from rag_llm.adapters.openai import ChatStreamParser, ChunkStreamParser, OpenAIAPI
from rag_llm.config import ProviderConfig
from rag_llm.config._provider import FIELD_TYPES
from rag_llm.transport import Request

CANARY = "sk-canary-6f1d2e9b7a"
API = OpenAIAPI(ProviderConfig.from_mapping({
    "type": "openai_compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1",
    "api_key": CANARY, "name": "fuzzed"}))
REQUEST = Request(method="POST", url="http://127.0.0.1:9/v1/chat/completions", headers={},
                  content=b"{}", endpoint="http://127.0.0.1:9/v1/chat/completions")
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

texts = st.text(max_size=20)
noise = st.sampled_from(["", ": keep-alive", "event: message", "id: 7", "retry: 100"])


def _chunk(text: str, n: int) -> dict[str, Any]:
    delta = {"role": "assistant", "content": text} if n == 0 else {"content": text}
    return {"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


@FAST
@given(st.lists(st.tuples(texts, st.lists(noise, max_size=2)), max_size=12),
       st.booleans(), st.lists(st.text(max_size=30), max_size=3))
def test_a_stream_gives_back_exactly_its_deltas_whatever_surrounds_them(
        pieces: list[tuple[str, list[str]]], spaced: bool, after_done: list[str]) -> None:
    lines: list[str] = []
    for n, (text, extra) in enumerate(pieces):
        lines.extend(extra)
        lines.append(("data: " if spaced else "data:") + json.dumps(_chunk(text, n)))
    lines.append("data: [DONE]")
    lines.extend(after_done)  # read and ignored: the body is drained to its end
    text_parser, chunk_parser = ChatStreamParser(API, REQUEST), ChunkStreamParser(API, REQUEST)
    deltas = [d for d in map(text_parser.feed, lines) if d is not None]
    chunks = [c for c in map(chunk_parser.feed, lines) if c is not None]
    assert deltas == [text for text, _ in pieces if text]
    assert chunks == [_chunk(text, n) for n, (text, _) in enumerate(pieces)]
    assert text_parser.done
    assert chunk_parser.done
    assert "".join(text_parser.received) == "".join(text for text, _ in pieces)


@FAST
@given(st.text(max_size=60))
def test_any_data_line_is_a_value_or_a_typed_error_naming_the_provider(payload: str) -> None:
    for parser in (ChatStreamParser(API, REQUEST), ChunkStreamParser(API, REQUEST)):
        failed: errors.MalformedResponseError | errors.UpstreamError | None = None
        try:
            parser.feed("data: " + payload)
        except (errors.MalformedResponseError, errors.UpstreamError) as exc:  # or an error event
            failed = exc
        if failed is not None:
            assert failed.provider == "fuzzed"
            assert CANARY not in str(failed)


@FAST
@given(st.integers(min_value=400, max_value=599), st.binary(max_size=300),
       st.dictionaries(st.sampled_from(["retry-after", "x-request-id", "content-type"]),
                       st.text(max_size=20), max_size=3),
       st.booleans())
def test_any_error_response_maps_to_a_typed_error_without_the_key(
        status: int, content: bytes, headers: dict[str, str], echo: bool) -> None:
    if echo:  # an upstream that repeats the key it was sent
        content = json.dumps({"error": {"message": f"bad key {CANARY} ({content!r})"}}).encode()
    error = upstream_error(provider="fuzzed", endpoint="http://127.0.0.1:9/v1/embeddings",
                           status=status, headers=headers, content=content, secrets=[CANARY])
    assert isinstance(error, errors.UpstreamError)
    assert error.status == status
    assert error.provider == "fuzzed"
    assert "fuzzed" in str(error)
    assert "http://127.0.0.1:9/v1/embeddings" in str(error)
    assert CANARY not in str(error)
    assert CANARY not in repr(error)


@FAST
@given(st.one_of(st.text(max_size=40), st.sampled_from([
    "inf", "-inf", "nan", "1e400", "-3", ":", "Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 99 Foo"])),
    st.sampled_from(["retry-after", "retry-after-ms"]))
def test_any_retry_after_is_a_finite_wait_or_none(raw: str, header: str) -> None:
    wait = parse_retry_after({header: raw})
    assert wait is None or 0.0 <= wait < float("inf")


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.integers(), max_size=2), st.dictionaries(
                       st.text(max_size=5), st.integers(), max_size=2))


@FAST
@given(st.dictionaries(st.sampled_from(sorted(FIELD_TYPES)), values, max_size=4),
       st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=1))
def test_any_mapping_builds_or_raises_a_config_error_naming_a_field_never_the_key(
        fields: dict[str, Any], unknown: dict[str, Any]) -> None:
    mapping = {"type": "openai_compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1",
               "api_key": CANARY, **fields, **unknown}
    refused: errors.ConfigError | None = None
    try:
        config = ProviderConfig.from_mapping(mapping)
    except errors.ConfigError as exc:
        refused = exc
    if refused is None:
        assert CANARY not in repr(config)
    else:
        assert refused.field
        assert CANARY not in str(refused)
        assert CANARY not in repr(refused)
