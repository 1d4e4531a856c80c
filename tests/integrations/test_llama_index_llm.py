"""RagLLM and RagLLMEmbedding call by call: every LlamaIndex form, the provider contract,
batching, pooling, errors and secrets, over a real upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole
from llama_index.core.tools import FunctionTool
from pydantic import ValidationError
from structlog.testing import capture_logs
from support import KEY, eventually, provider_config

from rag_llm import create_provider, errors
from rag_llm.integrations.llama_index import RagLLM, RagLLMEmbedding, _StreamState
from rag_llm.testing import Fault, UpstreamServer

QUESTION = [ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
            ChatMessage(role=MessageRole.USER, content="how do pools reuse connections")]
ANSWER = "echo: how do pools reuse connections"
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


def chat_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return provider_config(server, model="gpt-4o-mini", **overrides)


def embedding_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return provider_config(server, model="text-embedding-3-small", **overrides)


@pytest.fixture
def llm(server: UpstreamServer) -> Iterator[RagLLM]:
    with RagLLM(config=chat_config(server)) as owned:
        yield owned


def usage_of(text_sent: str, answer: str) -> dict[str, int]:
    """The upstream's usage: words of the messages sent, and of the answer."""
    prompt, completion = len(text_sent.split()), len(answer.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


SENT_WORDS = "Be brief. how do pools reuse connections"


def test_chat_returns_the_message_the_completion_and_its_usage(server: UpstreamServer,
                                                               llm: RagLLM) -> None:
    response = llm.chat(QUESTION)

    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == ANSWER
    assert response.raw["object"] == "chat.completion"
    assert response.raw["choices"][0]["message"]["content"] == ANSWER
    assert response.additional_kwargs == usage_of(SENT_WORDS, ANSWER)
    assert server.requests[-1].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "how do pools reuse connections"}]


async def test_achat_and_acomplete(server: UpstreamServer, llm: RagLLM) -> None:
    response = await llm.achat(QUESTION)
    assert response.message.content == ANSWER
    assert response.additional_kwargs == usage_of(SENT_WORDS, ANSWER)

    completion = await llm.acomplete("pools and breakers")
    assert completion.text == "echo: pools and breakers"
    assert completion.additional_kwargs == usage_of("pools and breakers", completion.text)
    assert server.requests[-1].json["messages"] == [{"role": "user",
                                                     "content": "pools and breakers"}]


def test_complete_sends_the_prompt_as_one_user_message(server: UpstreamServer,
                                                       llm: RagLLM) -> None:
    completion = llm.complete("pools and breakers")
    assert completion.text == "echo: pools and breakers"
    assert completion.raw["object"] == "chat.completion"
    assert completion.additional_kwargs["total_tokens"] == 3 + 4
    assert server.requests[-1].json["messages"] == [{"role": "user",
                                                     "content": "pools and breakers"}]


def test_stream_chat_and_stream_complete_yield_deltas(server: UpstreamServer,
                                                      llm: RagLLM) -> None:
    chunks = list(llm.stream_chat(QUESTION))
    assert [c.delta for c in chunks] == ["echo: ", "how ", "do ", "pools ", "reuse ",
                                         "connections", ""]
    assert chunks[-1].message.content == ANSWER
    assert chunks[2].message.content == "echo: how do "
    assert chunks[0].raw["object"] == "chat.completion.chunk"
    assert server.requests[-1].json["stream"] is True

    pieces = list(llm.stream_complete("one two three"))
    assert "".join(p.delta or "" for p in pieces) == "echo: one two three"
    assert pieces[-1].text == "echo: one two three"
    assert pieces[-1].additional_kwargs["completion_tokens"] == 4


async def test_astream_chat_and_astream_complete_yield_deltas(server: UpstreamServer,
                                                              llm: RagLLM) -> None:
    chunks = [c async for c in await llm.astream_chat(QUESTION)]
    assert "".join(c.delta or "" for c in chunks) == ANSWER
    assert chunks[-1].message.content == ANSWER
    assert len(chunks) == len(ANSWER.split()) + 1  # and the usage

    pieces = [p async for p in await llm.astream_complete("one two three")]
    assert [p.delta for p in pieces] == ["echo: ", "one ", "two ", "three", ""]
    assert pieces[-1].text == "echo: one two three"


async def test_streams_ask_for_usage_and_yield_it_last(server: UpstreamServer,
                                                        llm: RagLLM) -> None:
    chunks = [c async for c in await llm.astream_chat(QUESTION)]
    assert server.requests[-1].json["stream_options"] == {"include_usage": True}
    assert chunks[-1].delta == ""
    assert chunks[-1].message.content == ANSWER
    assert chunks[-1].additional_kwargs == usage_of(SENT_WORDS, ANSWER)
    assert all(c.additional_kwargs == {} for c in chunks[:-1])


def test_stream_usage_false_sends_no_stream_options(server: UpstreamServer) -> None:
    with RagLLM(config=chat_config(server), stream_usage=False) as llm:
        chunks = list(llm.stream_chat(QUESTION))
        assert "stream_options" not in server.requests[-1].json
        assert chunks[-1].delta == "connections"
        assert all(c.additional_kwargs == {} for c in chunks)


def test_request_fields_come_from_the_llm_then_the_call(server: UpstreamServer) -> None:
    with RagLLM(config=chat_config(server), temperature=0.2, max_tokens=50,
                additional_kwargs={"seed": 7, "top_p": 0.9}) as llm:
        llm.chat(QUESTION, top_p=0.5, stop=["\n"])
        sent = server.requests[-1].json
        assert sent["model"] == "gpt-4o-mini"
        assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.2, 50, 7)
        assert (sent["top_p"], sent["stop"]) == (0.5, ["\n"])
        llm.complete("hi")
        assert "stop" not in server.requests[-1].json
        llm.complete("hi", model="gpt-4o")
        assert server.requests[-1].json["model"] == "gpt-4o"


def test_a_model_given_overrides_the_providers(server: UpstreamServer) -> None:
    with RagLLM(config=chat_config(server), model="gpt-4o") as llm:
        assert llm.metadata.model_name == "gpt-4o"
        list(llm.stream_complete("hi"))
        assert server.requests[-1].json["model"] == "gpt-4o"


def test_metadata_names_the_model_and_its_configured_window(server: UpstreamServer) -> None:
    with RagLLM(config=chat_config(server), context_window=128000, num_output=1024) as llm:
        metadata = llm.metadata
        assert metadata.model_name == "gpt-4o-mini"
        assert metadata.is_chat_model is True
        assert (metadata.context_window, metadata.num_output) == (128000, 1024)


def test_roles_and_tool_messages_map_to_openai_messages(server: UpstreamServer,
                                                        llm: RagLLM) -> None:
    call = TOOL_CALL["choices"][0]["message"]["tool_calls"]  # type: ignore[index]
    llm.chat([
        ChatMessage(role=MessageRole.DEVELOPER, content="rules"),
        ChatMessage(role=MessageRole.USER, content="look it up", additional_kwargs={"name": "ann"}),
        ChatMessage(role=MessageRole.ASSISTANT, content=None,
                    additional_kwargs={"tool_calls": call}),
        ChatMessage(role=MessageRole.TOOL, content="pools reuse connections",
                    additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(role=MessageRole.CHATBOT, content="noted"),
        ChatMessage(role=MessageRole.MODEL, content="also noted"),
        ChatMessage(role=MessageRole.USER, content="thanks"),
    ])
    assert server.requests[-1].json["messages"] == [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": "look it up", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "content": "pools reuse connections", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "noted"},
        {"role": "assistant", "content": "also noted"},
        {"role": "user", "content": "thanks"},
    ]


def test_tool_calls_come_back_in_the_message(server: UpstreamServer, llm: RagLLM) -> None:
    server.add_fault(Fault(status=200, body=TOOL_CALL))
    response = llm.chat(QUESTION, tools=[{"type": "function", "function": {"name": "lookup"}}])
    assert response.message.content is None
    assert response.message.additional_kwargs["tool_calls"][0]["function"]["name"] == "lookup"
    assert response.additional_kwargs == {"prompt_tokens": 7, "completion_tokens": 3,
                                          "total_tokens": 10}
    assert server.requests[-1].json["tools"][0]["function"]["name"] == "lookup"


def test_a_non_text_block_is_refused_before_any_request(server: UpstreamServer,
                                                        llm: RagLLM) -> None:
    image = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://127.0.0.1/x.png")])
    with pytest.raises(ValueError, match=r"messages\[1\] holds a ImageBlock"):
        llm.chat([QUESTION[1], image])
    assert server.requests == []


def test_many_sync_calls_share_one_connection(server: UpstreamServer, llm: RagLLM) -> None:
    for i in range(10):
        assert llm.chat([ChatMessage(content=f"q{i}")]).message.content == f"echo: q{i}"
        assert llm.complete(f"c{i}").text == f"echo: c{i}"
        assert "".join(c.delta or "" for c in llm.stream_chat([ChatMessage(content="s")])) \
            == "echo: s"
    assert server.requests_served == 30
    assert server.connections_accepted == 1


async def test_many_async_calls_share_one_connection(server: UpstreamServer) -> None:
    async with RagLLM(config=chat_config(server)) as llm, \
            RagLLMEmbedding(config=embedding_config(server)) as embed:
        for i in range(10):
            await llm.achat([ChatMessage(content=f"q{i}")])
            [c async for c in await llm.astream_complete(f"s{i}")]
        assert server.connections_accepted == 1
        for i in range(10):
            await embed.aget_query_embedding(f"q{i}")
        assert server.connections_accepted == 2  # the embedding provider's own


async def test_async_calls_overlap_on_one_loop(server: UpstreamServer, llm: RagLLM) -> None:
    server.delay = 0.3
    await asyncio.gather(*(llm.achat([ChatMessage(content=f"q{i}")]) for i in range(5)),
                         *(llm.acomplete(f"c{i}") for i in range(5)))
    assert server.max_in_flight == 10


def test_an_interrupted_stream_raises_with_what_it_received(server: UpstreamServer,
                                                            llm: RagLLM) -> None:
    server.add_fault(Fault(action="truncate_stream"))
    received = []
    with pytest.raises(errors.StreamInterruptedError) as caught:
        received.extend(c.delta for c in llm.stream_chat(QUESTION))
    assert received == ["echo: "]
    assert "".join(caught.value.received) == "echo: "


async def test_upstream_errors_stay_rag_llm_errors(server: UpstreamServer, llm: RagLLM) -> None:
    server.add_fault(Fault(status=500, times=2))
    with pytest.raises(errors.ServerError) as sync_error:
        llm.chat(QUESTION)
    with pytest.raises(errors.ServerError):
        await llm.acomplete("hi")
    assert sync_error.value.status == 500
    server.add_fault(Fault(status=429, headers={"Retry-After": "1"}))
    with pytest.raises(errors.RateLimitError):
        [c async for c in await llm.astream_chat(QUESTION)]
    with RagLLM(config=chat_config(server, api_key="sk-wrong-key-0000")) as wrong:
        with pytest.raises(errors.AuthenticationError) as denied:
            wrong.complete("hi")
        assert "sk-wrong-key-0000" not in str(denied.value)


# -- The provider= / config= contract --


def test_a_borrowed_provider_stays_open(server: UpstreamServer) -> None:
    with create_provider("llm", chat_config(server)) as chat, \
            create_provider("embedding", embedding_config(server)) as emb:
        with RagLLM(provider=chat) as llm, RagLLMEmbedding(provider=emb) as embed:
            assert llm.provider is chat
            assert embed.provider is emb
            assert not llm.owns_provider
            assert not embed.owns_provider
            llm.complete("hi")
            embed.get_text_embedding("hi")
        llm.close()
        assert chat.chat([{"role": "user", "content": "still open"}]) == "echo: still open"
        assert emb.embed(["still open"]) == [server.expected_embedding("still open")]
        assert llm.complete("again").text == "echo: again"


async def test_an_owned_provider_is_closed_by_aclose(server: UpstreamServer) -> None:
    llm = RagLLM(config=chat_config(server))
    embed = RagLLMEmbedding(config=embedding_config(server))
    assert llm.owns_provider
    assert embed.owns_provider
    await llm.acomplete("hi")
    await embed.aget_text_embedding("hi")
    await llm.aclose()
    await embed.aclose()
    with pytest.raises(errors.ProviderClosedError):
        await llm.acomplete("hi")
    with pytest.raises(errors.ProviderClosedError):
        await embed.aget_query_embedding("hi")
    await llm.aclose()  # idempotent
    assert await eventually(lambda: server.connections_open == 0)


def test_an_owned_provider_is_closed_by_close(server: UpstreamServer) -> None:
    with RagLLM(config=chat_config(server)) as llm:
        llm.complete("hi")
    with pytest.raises(errors.ProviderClosedError):
        llm.complete("hi")
    with pytest.raises(errors.ProviderClosedError):
        list(llm.stream_complete("hi"))
    assert server.wait_until(lambda s: s.connections_open == 0)


@pytest.mark.parametrize("cls", [RagLLM, RagLLMEmbedding])
def test_exactly_one_of_provider_and_config(server: UpstreamServer, cls: type[Any]) -> None:
    with pytest.raises(errors.ConfigError, match=r"give provider= .* or config=") as neither:
        cls()
    assert neither.value.field == "provider"
    kind = "llm" if cls is RagLLM else "embedding"
    with create_provider(kind, chat_config(server)) as provider:
        with pytest.raises(errors.ConfigError, match="not both") as both:
            cls(provider=provider, config=chat_config(server))
        assert both.value.field == "config"
        assert KEY not in str(both.value)


def test_a_provider_of_the_wrong_kind_is_refused(server: UpstreamServer) -> None:
    with create_provider("llm", chat_config(server)) as chat, \
            create_provider("embedding", embedding_config(server)) as emb:
        with pytest.raises(errors.ConfigError, match="must be a rag-llm chat provider") as llm:
            RagLLM(provider=emb)
        assert llm.value.field == "provider"
        with pytest.raises(errors.ConfigError, match="must be a rag-llm embedding provider"):
            RagLLMEmbedding(provider=chat)
        with pytest.raises(errors.ConfigError):
            RagLLMEmbedding(provider="text-embedding-3-small")  # type: ignore[arg-type]


def test_bad_config_names_the_field(server: UpstreamServer) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        RagLLM(config=chat_config(server, max_connections=-5))
    assert caught.value.field == "max_connections"
    assert KEY not in str(caught.value)
    with capture_logs() as logs:
        with pytest.raises(ValidationError, match="context_window"):
            RagLLM(config=chat_config(server), context_window=0)
        with pytest.raises(ValidationError, match="embed_batch_size"):
            RagLLMEmbedding(config=embedding_config(server), embed_batch_size=0)
    # The providers built for them were closed, not left behind.
    closed = [e["kind"] for e in logs if e["event"] == "provider_closed"]
    assert closed == ["llm", "embedding"]


def test_no_secret_in_repr_or_serialized_form(server: UpstreamServer) -> None:
    with RagLLM(config=chat_config(server)) as llm, \
            RagLLMEmbedding(config=embedding_config(server)) as embed:
        for text in (repr(llm), str(llm), llm.to_json(), repr(llm.to_payload()),
                     repr(embed), str(embed), embed.to_json(), repr(embed.to_payload()),
                     repr(llm.provider), repr(embed.provider)):
            assert KEY not in text
        assert "gpt-4o-mini" in repr(llm)
        assert embed.model_name == "text-embedding-3-small"


# -- Embeddings --


def test_embeddings_are_the_upstream_vectors(server: UpstreamServer) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed:
        assert embed.get_query_embedding("pools") == server.expected_embedding("pools")
        assert embed.get_text_embedding("breakers") == server.expected_embedding("breakers")
        texts = [f"text {i}" for i in range(5)]
        assert embed.get_text_embedding_batch(texts) == [server.expected_embedding(t)
                                                         for t in texts]
        assert embed.get_text_embedding_batch([]) == []
        assert server.connections_accepted == 1


async def test_async_embeddings_are_the_upstream_vectors(server: UpstreamServer) -> None:
    async with RagLLMEmbedding(config=embedding_config(server)) as embed:
        assert await embed.aget_query_embedding("pools") == server.expected_embedding("pools")
        assert await embed.aget_text_embedding("b") == server.expected_embedding("b")
        texts = [f"text {i}" for i in range(5)]
        assert await embed.aget_text_embedding_batch(texts) == [server.expected_embedding(t)
                                                                for t in texts]
        assert server.connections_accepted == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_rag_llm_sizes_the_embedding_requests(server: UpstreamServer, mode: str) -> None:
    texts = [f"text {i}" for i in range(10)]
    async with RagLLMEmbedding(config=embedding_config(server, max_batch_size=4)) as embed:
        assert embed.embed_batch_size == 4
        if mode == "sync":
            vectors = embed.get_text_embedding_batch(texts)
        else:
            vectors = await embed.aget_text_embedding_batch(texts)
    assert vectors == [server.expected_embedding(t) for t in texts]
    assert sorted(len(r.json["input"]) for r in server.requests) == [2, 4, 4]


def test_one_llamaindex_batch_is_one_provider_call(server: UpstreamServer) -> None:
    texts = [f"text {i}" for i in range(10)]
    with RagLLMEmbedding(config=embedding_config(server, max_batch_size=3),
                         embed_batch_size=5) as embed:
        embed.get_text_embedding_batch(texts)
    # LlamaIndex hands over 5 and 5; rag-llm sends each as 3 + 2.
    assert [len(r.json["input"]) for r in server.requests] == [3, 2, 3, 2]


def test_embedding_errors_stay_rag_llm_errors(server: UpstreamServer) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed:
        server.add_fault(Fault(status=503))
        with pytest.raises(errors.ServerError) as caught:
            embed.get_query_embedding("pools")
        assert caught.value.status == 503
        assert KEY not in str(caught.value)


# -- Tools --


def lookup(q: str) -> str:
    """Look ``q`` up in the handbook."""
    return f"handbook on {q}: pools reuse connections"


def test_predict_and_call_runs_the_tool_the_model_chose(server: UpstreamServer,
                                                        llm: RagLLM) -> None:
    server.add_fault(Fault(status=200, body=TOOL_CALL))
    answer = llm.predict_and_call([FunctionTool.from_defaults(lookup)], "what about pools?")

    assert answer.response == "handbook on pools: pools reuse connections"
    sent = server.requests[-1].json
    assert sent["tools"][0]["function"]["name"] == "lookup"
    assert sent["tools"][0]["function"]["parameters"]["properties"]["q"]["type"] == "string"
    assert sent["tool_choice"] == "auto"
    assert sent["messages"] == [{"role": "user", "content": "what about pools?"}]
    assert llm.metadata.is_function_calling_model


# LlamaIndex's workflows read deprecated pydantic attributes of the agent they build.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
async def test_an_agent_calls_the_tool_then_answers(server: UpstreamServer,
                                                    llm: RagLLM) -> None:
    server.add_fault(Fault(status=200, body=TOOL_CALL))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(lookup)], llm=llm, streaming=False)
    result = await agent.run(user_msg="what about pools?")

    assert str(result) == "echo: what about pools?"
    *_, assistant, tool = server.requests[-1].json["messages"]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert tool == {"role": "tool", "tool_call_id": "call_1",
                    "content": "handbook on pools: pools reuse connections"}


@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
async def test_a_streaming_agent_streams_the_answer(server: UpstreamServer,
                                                    llm: RagLLM) -> None:
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(lookup)], llm=llm)
    handler = agent.run(user_msg="no tools needed")
    deltas = [event.delta async for event in handler.stream_events()
              if isinstance(event, AgentStream)]
    assert str(await handler) == "echo: no tools needed"
    assert "".join(deltas) == "echo: no tools needed"
    assert server.requests[-1].json["stream"] is True
    assert server.requests[-1].json["tools"][0]["function"]["name"] == "lookup"


def test_one_tool_call_is_kept_unless_parallel_calls_are_allowed(server: UpstreamServer,
                                                                 llm: RagLLM) -> None:
    two = json.loads(json.dumps(TOOL_CALL))
    calls = two["choices"][0]["message"]["tool_calls"]
    calls.append({**calls[0], "id": "call_2"})
    tools = [FunctionTool.from_defaults(lookup)]
    server.add_fault(Fault(status=200, body=two, times=2))
    single = llm.chat_with_tools(tools, "q", tool_required=True)
    assert [c.tool_id for c in llm.get_tool_calls_from_response(single)] == ["call_1"]
    assert server.requests[-1].json["tool_choice"] == "required"
    both = llm.chat_with_tools(tools, "q", allow_parallel_tool_calls=True)
    assert [c.tool_id for c in llm.get_tool_calls_from_response(both)] == ["call_1", "call_2"]
    assert "parallel_tool_calls" not in server.requests[-1].json
    server.add_fault(Fault(status=200, body=TOOL_CALL))
    llm.chat_with_tools(tools, "q", tool_choice="lookup")
    assert server.requests[-1].json["tool_choice"] == {"type": "function",
                                                       "function": {"name": "lookup"}}
    with pytest.raises(ValueError, match="without a tool call"):
        llm.get_tool_calls_from_response(llm.chat(QUESTION))
    assert llm.get_tool_calls_from_response(llm.chat(QUESTION),
                                            error_on_no_tool_call=False) == []


def test_streamed_tool_calls_grow_chunk_by_chunk(llm: RagLLM) -> None:
    # The upstream's scripted replies are whole JSON, so the chunks are given here.
    def chunk(delta: dict[str, Any]) -> dict[str, Any]:
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}

    state = _StreamState()
    first = state.feed(chunk({"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": ""}}]}))
    partial = state.feed(chunk({"tool_calls": [{"index": 0,
                                                "function": {"arguments": '{"q": "po'}}]}))
    assert partial is not None
    (growing,) = llm.get_tool_calls_from_response(partial)
    assert (growing.tool_name, set(growing.tool_kwargs)) == ("lookup", {"q"})
    last = state.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ols"}'}}]}))
    assert state.feed(chunk({})) is None
    assert first is not None
    assert last is not None
    assert first.message.additional_kwargs["tool_calls"][0]["function"]["arguments"] == ""
    assert last.message.additional_kwargs["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q": "pools"}'}}]
    # An agent reads the calls of each chunk: partial arguments parse as far as they go.
    assert [c.tool_kwargs for c in llm.get_tool_calls_from_response(last)] == [{"q": "pools"}]
