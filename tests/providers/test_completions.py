"""Whole completion objects and chunk streams, for callers that need more than the text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import KEY, config

from rag_llm import errors
from rag_llm.providers import ChatProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer

HELLO = [{"role": "user", "content": "hello there, pooled world"}]
TOOL_CALL = {
    "id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "pools"}'}}]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY) as upstream:
        yield upstream


def chatter(server: UpstreamServer, **overrides: Any) -> ChatProvider:
    return create_provider("llm", config(base_url=server.base_url, model="gpt-4o-mini",
                                         **overrides))


async def test_a_completion_comes_back_whole_with_usage(server: UpstreamServer) -> None:
    async with chatter(server) as llm:
        completion = await llm.achat_completion(HELLO, temperature=0)
        assert completion["choices"][0]["message"] == {
            "role": "assistant", "content": "echo: hello there, pooled world"}
        assert completion["usage"]["total_tokens"] == 4 + 5
    assert server.requests[0].json["temperature"] == 0


def test_tool_calls_reach_the_caller_as_the_upstream_sent_them(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=200, body=TOOL_CALL))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with chatter(server) as llm:
        completion = llm.chat_completion(HELLO, tools=tools)
    assert completion["choices"][0]["message"]["tool_calls"] == \
        TOOL_CALL["choices"][0]["message"]["tool_calls"]  # type: ignore[index]
    assert server.requests[0].json["tools"] == tools


def test_a_completion_without_choices_is_malformed(server: UpstreamServer) -> None:
    server.add_fault(Fault(status=200, body={"id": "x", "choices": []}))
    with chatter(server, retry=False) as llm, \
            pytest.raises(errors.MalformedResponseError) as caught:
        llm.chat_completion(HELLO)
    assert "choices" in str(caught.value)


async def test_chunks_stream_whole_usage_last(server: UpstreamServer) -> None:
    async with chatter(server) as llm:
        chunks = [chunk async for chunk in llm.astream_chunks(
            HELLO, stream_options={"include_usage": True})]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * len(chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hello there, pooled world"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_sync_chunks_match_async_ones(server: UpstreamServer) -> None:
    with chatter(server) as llm:
        chunks = list(llm.stream_chunks(HELLO))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        "echo: hello there, pooled world"
    assert server.connections_accepted == 1


async def test_a_chunk_stream_cut_short_carries_the_text_received(
        server: UpstreamServer) -> None:
    server.add_fault(Fault(action="truncate_stream"))
    async with chatter(server, retry=False) as llm:
        received: list[dict[str, Any]] = []

        async def read() -> None:
            async for chunk in llm.astream_chunks(HELLO):
                received.append(chunk)

        with pytest.raises(errors.StreamInterruptedError) as caught:
            await read()
    assert len(received) == 1
    assert caught.value.received == received[0]["choices"][0]["delta"]["content"]
