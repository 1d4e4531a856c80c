"""RagLLMEmbeddings and ChatRagLLM beyond LangChain's standard suites, over real sockets.

Tool calls, usage, request fields, pooling (counted at the server), who closes the provider,
and errors: rag-llm's typed ones, with no secret in them or in a repr.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
)
from langchain_core.tools import tool
from pydantic import SecretStr
from support import KEY, assert_rag_error

from rag_llm import errors
from rag_llm.integrations import langchain as integration
from rag_llm.integrations.langchain import ChatRagLLM, RagLLMEmbeddings
from rag_llm.providers import ChatProvider, EmbeddingProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer

LOOKUP_CALL = {"id": "call_1", "type": "function",
               "function": {"name": "lookup", "arguments": '{"q": "pools"}'}}


def completion(tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": tool_calls}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


@tool
def lookup(q: str) -> str:
    """Look ``q`` up."""
    return f"found {q}"


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY) as upstream:
        yield upstream


def chat_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": server.base_url, "api_key": KEY,
            "model": "gpt-4o-mini", "retry": False, "circuit_breaker": False, **overrides}


def embedding_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return chat_config(server, model="text-embedding-3-small", **overrides)


@pytest.fixture
def chat_provider(server: UpstreamServer) -> Iterator[ChatProvider]:
    with create_provider("llm", chat_config(server)) as provider:
        yield provider


@pytest.fixture
def embedding_provider(server: UpstreamServer) -> Iterator[EmbeddingProvider]:
    with create_provider("embedding", embedding_config(server)) as provider:
        yield provider


# -- tool calls --------------------------------------------------------------------------


async def test_a_tool_call_round_trips(server: UpstreamServer,
                                       chat_provider: ChatProvider) -> None:
    server.add_fault(Fault(status=200, body=completion([LOOKUP_CALL])))
    llm = ChatRagLLM(provider=chat_provider).bind_tools([lookup], tool_choice="lookup")
    question = HumanMessage("where are the pools?")
    called = await llm.ainvoke([question])
    assert called.tool_calls == [
        {"name": "lookup", "args": {"q": "pools"}, "id": "call_1", "type": "tool_call"}]
    assert called.response_metadata["finish_reason"] == "tool_calls"
    sent = server.requests[0].json
    assert sent["tools"][0]["function"]["name"] == "lookup"
    assert sent["tools"][0]["function"]["parameters"]["properties"] == {"q": {"type": "string"}}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}

    answer = await llm.ainvoke([question, called, lookup.invoke(called.tool_calls[0])])
    assert answer.content == "echo: where are the pools?"
    history = server.requests[1].json["messages"]
    assert history[1]["role"] == "assistant"
    assert history[1]["tool_calls"][0]["id"] == "call_1"
    assert json.loads(history[1]["tool_calls"][0]["function"]["arguments"]) == {"q": "pools"}
    assert history[2] == {"role": "tool", "tool_call_id": "call_1", "name": "lookup",
                          "content": "found pools"}


def test_arguments_that_are_not_json_make_an_invalid_tool_call(
        server: UpstreamServer, chat_provider: ChatProvider) -> None:
    broken = {"id": "call_2", "type": "function",
              "function": {"name": "lookup", "arguments": '{"q": "po'}}
    server.add_fault(Fault(status=200, body=completion([LOOKUP_CALL, broken])))
    message = ChatRagLLM(provider=chat_provider).bind_tools([lookup]).invoke("go")
    assert [call["id"] for call in message.tool_calls] == ["call_1"]
    (invalid,) = message.invalid_tool_calls
    assert (invalid["id"], invalid["name"], invalid["args"]) == ("call_2", "lookup", '{"q": "po')
    assert invalid["error"]


@pytest.mark.parametrize(("choice", "sent"), [
    ("any", "required"), (True, "required"), ("auto", "auto"), ("none", "none"),
    ({"type": "function", "function": {"name": "lookup"}},
     {"type": "function", "function": {"name": "lookup"}}),
])
def test_tool_choice_is_sent_as_openai_spells_it(server: UpstreamServer,
                                                 chat_provider: ChatProvider,
                                                 choice: Any, sent: Any) -> None:
    ChatRagLLM(provider=chat_provider).bind_tools([lookup], tool_choice=choice).invoke("hi")
    assert server.requests[0].json["tool_choice"] == sent


def test_streamed_tool_call_deltas_become_tool_call_chunks() -> None:
    # UpstreamServer scripts whole JSON replies only, so the chunk conversion is fed the
    # chat.completion.chunk objects an OpenAI stream carries for one tool call.
    deltas = [
        {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": "lookup", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"pools"}'}}]},
    ]
    raw = [{"id": "c", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    raw.append({"id": "c", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    chunks = [integration._generation_chunk(r) for r in raw]
    messages = [c.message for c in chunks if c is not None]
    assert all(isinstance(m, AIMessageChunk) for m in messages)
    assert messages[1].tool_call_chunks[0]["args"] == '{"q": '  # type: ignore[attr-defined]
    full = messages[0]
    for message in messages[1:]:
        full = full + message
    assert isinstance(full, AIMessageChunk)
    assert full.tool_calls == [
        {"name": "lookup", "args": {"q": "pools"}, "id": "call_1", "type": "tool_call"}]
    assert full.response_metadata == {"finish_reason": "tool_calls", "model_name": "gpt-4o-mini"}


# -- usage and request fields ------------------------------------------------------------


async def test_usage_comes_back_on_invoke_and_at_the_end_of_a_stream(
        server: UpstreamServer, chat_provider: ChatProvider) -> None:
    llm = ChatRagLLM(provider=chat_provider)
    message = await llm.ainvoke("one two three")
    # UpstreamServer counts words: 3 in, "echo: one two three" out.
    assert message.usage_metadata == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    full = None
    async for chunk in llm.astream("one two three"):
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk)
    assert full.content == "echo: one two three"
    assert full.usage_metadata == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert full.response_metadata["model_name"] == "gpt-4o-mini"
    assert server.requests[1].json["stream_options"] == {"include_usage": True}


def test_stream_usage_false_asks_for_none(server: UpstreamServer,
                                          chat_provider: ChatProvider) -> None:
    chunks = list(ChatRagLLM(provider=chat_provider, stream_usage=False).stream("hi"))
    assert "stream_options" not in server.requests[0].json
    assert all(not c.usage_metadata for c in chunks)


def test_fields_and_per_call_arguments_reach_the_request(server: UpstreamServer,
                                                         chat_provider: ChatProvider) -> None:
    llm = ChatRagLLM(provider=chat_provider, model="gpt-4o", temperature=0.2, max_tokens=50,
                     stop=["END"], seed=7, model_kwargs={"user": "u-1"})
    message = llm.invoke([SystemMessage("be brief"), HumanMessage("hello"),
                          AIMessage("hi"), HumanMessage("again")],
                         stop=["STOP"], temperature=0.9)
    assert message.content == "echo: again"
    sent = server.requests[0].json
    assert sent["model"] == "gpt-4o"
    assert message.response_metadata["model_name"] == "gpt-4o"
    assert (sent["temperature"], sent["max_tokens"], sent["seed"], sent["user"]) == \
        (0.9, 50, 7, "u-1")
    assert sent["stop"] == ["STOP"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    llm.invoke("x")
    assert server.requests[1].json["stop"] == ["END"]
    assert server.requests[1].json["temperature"] == 0.2


def test_without_a_model_field_the_providers_model_is_sent(server: UpstreamServer,
                                                           chat_provider: ChatProvider) -> None:
    llm = ChatRagLLM(provider=chat_provider)
    llm.invoke("hi")
    assert server.requests[0].json["model"] == "gpt-4o-mini"
    assert llm._get_ls_params()["ls_model_name"] == "gpt-4o-mini"
    assert llm._get_ls_params()["ls_provider"] == "openai"


def test_streaming_true_makes_invoke_stream(server: UpstreamServer,
                                            chat_provider: ChatProvider) -> None:
    message = ChatRagLLM(provider=chat_provider, streaming=True).invoke("hi there")
    assert message.content == "echo: hi there"
    assert server.requests[0].json["stream"] is True


def test_embeddings_are_the_upstreams_vectors(server: UpstreamServer,
                                              embedding_provider: EmbeddingProvider) -> None:
    embeddings = RagLLMEmbeddings(provider=embedding_provider)
    assert embeddings.embed_documents(["a", "b"]) == [server.expected_embedding("a"),
                                                      server.expected_embedding("b")]
    assert embeddings.embed_query("c") == server.expected_embedding("c")
    assert server.requests[0].json["input"] == ["a", "b"]


# -- pooling -----------------------------------------------------------------------------


async def test_many_async_calls_share_one_connection(server: UpstreamServer) -> None:
    async with ChatRagLLM(config=chat_config(server)) as llm, \
            RagLLMEmbeddings(config=embedding_config(server)) as embeddings:
        for i in range(10):
            assert (await llm.ainvoke(f"call {i}")).content == f"echo: call {i}"
            async for _ in llm.astream(f"stream {i}"):
                pass
        for i in range(10):
            await embeddings.aembed_query(f"text {i}")
    assert server.requests_served == 30
    # Chat and embeddings: two providers, one connection each.
    assert server.connections_accepted == 2


def test_many_sync_calls_share_one_connection(server: UpstreamServer) -> None:
    with ChatRagLLM(config=chat_config(server)) as llm:
        for i in range(10):
            llm.invoke(f"call {i}")
            list(llm.stream(f"stream {i}"))
    assert server.requests_served == 20
    assert server.connections_accepted == 1


# -- who closes the provider -------------------------------------------------------------


async def test_a_provider_passed_in_is_not_closed(server: UpstreamServer,
                                                  chat_provider: ChatProvider,
                                                  embedding_provider: EmbeddingProvider) -> None:
    async with ChatRagLLM(provider=chat_provider) as llm:
        await llm.ainvoke("hi")
    ChatRagLLM(provider=chat_provider).close()
    with RagLLMEmbeddings(provider=embedding_provider) as embeddings:
        embeddings.embed_query("hi")
    await RagLLMEmbeddings(provider=embedding_provider).aclose()
    assert not ChatRagLLM(provider=chat_provider).owns_provider
    assert await chat_provider.achat([{"role": "user", "content": "still"}]) == "echo: still"
    assert await embedding_provider.aembed("still") == [server.expected_embedding("still")]


async def test_a_provider_built_from_config_is_closed_by_aclose(server: UpstreamServer) -> None:
    llm = ChatRagLLM(config=chat_config(server))
    embeddings = RagLLMEmbeddings(config=embedding_config(server))
    assert llm.owns_provider
    assert embeddings.owns_provider
    await llm.ainvoke("hi")
    await embeddings.aembed_query("hi")
    assert server.connections_open == 2
    await llm.aclose()
    await embeddings.aclose()
    assert server.wait_until(lambda s: s.connections_open == 0)
    with pytest.raises(errors.ProviderClosedError):
        await llm.ainvoke("again")
    with pytest.raises(errors.ProviderClosedError):
        await embeddings.aembed_query("again")


def test_a_provider_built_from_config_is_closed_by_close(server: UpstreamServer) -> None:
    with ChatRagLLM(config=chat_config(server)) as llm:
        llm.invoke("hi")
        assert server.connections_open == 1
    assert server.wait_until(lambda s: s.connections_open == 0)
    with pytest.raises(errors.ProviderClosedError):
        llm.invoke("again")


# -- settings and errors -----------------------------------------------------------------


def test_max_retries_and_timeout_go_into_the_owned_providers_config(
        server: UpstreamServer) -> None:
    config = chat_config(server, retry={"base_delay": 0.01})
    with ChatRagLLM(config=config, max_retries=2, timeout=12.5) as llm:
        assert llm.provider is not None
        assert llm.provider.config.retry.max_attempts == 3
        assert llm.provider.config.retry.base_delay == 0.01
        assert llm.provider.config.deadline == 12.5
        server.add_fault(Fault(status=503, times=2))
        assert llm.invoke("hi").content == "echo: hi"
    assert len(server.requests) == 3
    with ChatRagLLM(config=config, max_retries=0) as llm:
        server.add_fault(Fault(status=503))
        with pytest.raises(errors.ServerError) as caught:
            llm.invoke("hi")
    assert caught.value.status == 503
    assert len(server.requests) == 4


def test_an_upstream_error_stays_rag_llms_and_hides_the_key(server: UpstreamServer) -> None:
    wrong = "sk-wrong-SECRET-fedcba9876543210"
    with ChatRagLLM(config=chat_config(server), api_key=SecretStr(wrong)) as llm, \
            pytest.raises(errors.AuthenticationError) as caught:
        llm.invoke("hi")
    assert_rag_error(caught.value)
    assert caught.value.status == 401
    assert wrong not in str(caught.value)
    assert KEY not in str(caught.value)
    assert server.requests[0].headers["authorization"] == f"Bearer {wrong}"


async def test_an_embedding_error_stays_rag_llms(server: UpstreamServer,
                                                 embedding_provider: EmbeddingProvider) -> None:
    server.add_fault(Fault(status=500))
    with pytest.raises(errors.ServerError) as caught:
        await RagLLMEmbeddings(provider=embedding_provider).aembed_documents(["x"])
    assert_rag_error(caught.value)
    assert KEY not in str(caught.value)


def test_the_key_is_in_no_repr_or_dump(server: UpstreamServer) -> None:
    with ChatRagLLM(config=chat_config(server)) as llm, \
            RagLLMEmbeddings(config=embedding_config(server), api_key=SecretStr(KEY)) as emb:
        for shown in (repr(llm), str(llm), llm.model_dump_json(), repr(llm._identifying_params),
                      repr(emb), str(emb), emb.model_dump_json()):
            assert KEY not in shown
            assert "SECRET" not in shown


@pytest.mark.parametrize(("arguments", "field"), [
    ({}, "provider"),
    ({"config": "openai"}, "config"),
    ({"config": {"type": "openai", "model": "m", "max_connections": -1}}, "max_connections"),
])
def test_bad_construction_is_a_config_error_naming_the_field(arguments: dict[str, Any],
                                                             field: str) -> None:
    for cls in (ChatRagLLM, RagLLMEmbeddings):
        with pytest.raises(errors.ConfigError) as caught:
            cls(**arguments)
        assert caught.value.field == field


def test_provider_settings_are_refused_beside_a_provider(chat_provider: ChatProvider,
                                                         server: UpstreamServer) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        ChatRagLLM(provider=chat_provider, api_key=SecretStr(KEY))
    assert caught.value.field == "api_key"
    assert KEY not in str(caught.value)
    with pytest.raises(errors.ConfigError) as caught:
        ChatRagLLM(provider=chat_provider, max_retries=1)
    assert caught.value.field == "max_retries"
    with pytest.raises(errors.ConfigError) as caught:
        ChatRagLLM(provider=chat_provider, config=chat_config(server))
    assert caught.value.field == "config"
    with pytest.raises(errors.ConfigError) as caught:
        ChatRagLLM(provider=chat_provider).bind_tools([lookup], tool_choice=3)  # type: ignore[arg-type]
    assert caught.value.field == "tool_choice"
