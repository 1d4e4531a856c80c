"""rag-llm under LlamaIndex's own interfaces: Settings, an index built and queried, chat engines.

The upstream answers "echo: <last user message>", so what LlamaIndex put in the prompt
comes back in the answer, and the server's record shows what each request carried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.schema import TextNode
from support import KEY, provider_config

from rag_llm import create_provider, errors
from rag_llm.integrations.llama_index import RagLLM, RagLLMEmbedding
from rag_llm.testing import Fault, UpstreamServer

TEXTS = [
    "Connection pools keep TCP connections open between requests.",
    "Circuit breakers stop calls to an endpoint that keeps failing.",
    "Bananas are yellow and grow in bunches.",
    "Retries under a budget never multiply an outage.",
]
QUESTION = "How do pools reuse connections?"


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture
def settings() -> Iterator[Any]:
    """LlamaIndex's global Settings, put back as they were after the test."""
    saved = {f.name: getattr(Settings, f.name) for f in dataclasses.fields(Settings)}
    yield Settings
    for name, value in saved.items():
        setattr(Settings, name, value)


@pytest.fixture
def no_stray_loop() -> Iterator[None]:
    """Close the event loop LlamaIndex's sync token counting leaves as the thread's own
    (llama_index.core.async_utils.asyncio_run calls asyncio.get_event_loop())."""
    yield
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # none left, and none made
        return
    if not loop.is_running():
        loop.close()
        asyncio.set_event_loop(None)


def embedding_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return provider_config(server, model="text-embedding-3-small", **overrides)


def chat_config(server: UpstreamServer, **overrides: Any) -> dict[str, Any]:
    return provider_config(server, model="gpt-4o-mini", **overrides)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def ranked(server: UpstreamServer, query: str) -> list[str]:
    """TEXTS, most similar to ``query`` first, by the upstream's own vectors."""
    target = server.expected_embedding(query)
    return sorted(TEXTS, key=lambda t: -cosine(server.expected_embedding(t), target))


def last_user(server: UpstreamServer) -> str:
    """The last user message of the last chat request the upstream received."""
    chats = [r for r in server.requests if r.path == "/v1/chat/completions"]
    messages = chats[-1].json["messages"]
    return str(next(m["content"] for m in reversed(messages) if m["role"] == "user"))


def embedded_inputs(server: UpstreamServer) -> list[str]:
    return [text for r in server.requests if r.path == "/v1/embeddings" for text in r.json["input"]]


@pytest.mark.usefixtures("no_stray_loop")
def test_an_index_built_and_queried_through_settings(server: UpstreamServer,
                                                     settings: Any) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model = embed_model
        settings.llm = llm
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
        assert sorted(embedded_inputs(server)) == sorted(TEXTS)

        response = index.as_query_engine(similarity_top_k=2).query(QUESTION)

        best, second = ranked(server, QUESTION)[:2]
        assert [n.node.get_content() for n in response.source_nodes] == [best, second]
        score = cosine(server.expected_embedding(best), server.expected_embedding(QUESTION))
        assert response.source_nodes[0].score == pytest.approx(score)
        prompt = last_user(server)
        assert best in prompt
        assert second in prompt
        assert QUESTION in prompt
        assert response.response == "echo: " + prompt
        assert embedded_inputs(server)[-1] == QUESTION
        for _ in range(5):
            index.as_query_engine().query(QUESTION)
        # One connection per provider, reused by every later call.
        assert server.connections_accepted == 2


def test_retrieval_ranks_by_the_upstream_vectors(server: UpstreamServer) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed_model:
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS],
                                                embed_model=embed_model)
        for query in (QUESTION, "What colour are bananas?", "breakers"):
            nodes = index.as_retriever(similarity_top_k=len(TEXTS)).retrieve(query)
            assert [n.node.get_content() for n in nodes] == ranked(server, query)


@pytest.mark.usefixtures("no_stray_loop")
def test_a_streaming_query_engine_streams_the_upstream_words(server: UpstreamServer,
                                                             settings: Any) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model, settings.llm = embed_model, llm
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
        response = index.as_query_engine(streaming=True).query(QUESTION)
        tokens = list(response.response_gen)

        assert len(tokens) > 3
        assert "".join(tokens) == "echo: " + last_user(server)
        chat = server.requests[-1]
        assert chat.json["stream"] is True


async def test_an_async_index_and_query_engine_run_on_the_loop(server: UpstreamServer,
                                                               settings: Any) -> None:
    async with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model, settings.llm = embed_model, llm
        index = VectorStoreIndex(nodes=[])
        await index.ainsert_nodes([TextNode(text=t) for t in TEXTS])
        assert sorted(embedded_inputs(server)) == sorted(TEXTS)

        response = await index.as_query_engine(similarity_top_k=1).aquery(QUESTION)
        assert response.source_nodes[0].node.get_content() == ranked(server, QUESTION)[0]
        assert response.response == "echo: " + last_user(server)

        # Real async: queries overlap at the upstream instead of queueing on the loop.
        server.delay = 0.3
        engine = index.as_query_engine(similarity_top_k=1)
        answers = await asyncio.gather(*(engine.aquery(f"{QUESTION} {i}") for i in range(6)))
        assert server.max_in_flight >= 6
        assert all(str(a).startswith("echo: ") for a in answers)


async def test_an_async_streaming_query_engine(server: UpstreamServer, settings: Any) -> None:
    async with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model, settings.llm = embed_model, llm
        index = VectorStoreIndex(nodes=[])
        await index.ainsert_nodes([TextNode(text=t) for t in TEXTS])
        response = await index.as_query_engine(streaming=True).aquery(QUESTION)
        tokens = [token async for token in response.async_response_gen()]

        assert len(tokens) > 3
        assert "".join(tokens) == "echo: " + last_user(server)
        assert server.connections_accepted == 2


@pytest.mark.usefixtures("no_stray_loop")
def test_a_chat_engine_sends_the_history_with_openai_roles(server: UpstreamServer,
                                                            settings: Any) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model, settings.llm = embed_model, llm
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
        # An in-process memory: the default one keeps an aiosqlite connection it never closes.
        engine = index.as_chat_engine(chat_mode="context",
                                      memory=ChatMemoryBuffer.from_defaults())
        first = engine.chat("What keeps connections open?")
        second = engine.chat("And what stops failing calls?")

        assert str(first) == "echo: What keeps connections open?"
        assert str(second) == "echo: And what stops failing calls?"
        messages = server.requests[-1].json["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[2]["content"] == str(first)
        assert any(t in messages[0]["content"] for t in TEXTS)


@pytest.mark.usefixtures("no_stray_loop")
def test_llamaindex_callbacks_see_every_embedding_and_llm_call(server: UpstreamServer,
                                                               settings: Any) -> None:
    debug = LlamaDebugHandler()
    settings.callback_manager = CallbackManager([debug])
    with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model, settings.llm = embed_model, llm
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
        index.as_query_engine().query(QUESTION)
        list(index.as_query_engine(streaming=True).query(QUESTION).response_gen)

    llm_events = debug.get_event_pairs(CBEventType.LLM)
    assert len(llm_events) == 2
    for start, end in llm_events:
        assert start.payload is not None
        assert end.payload is not None
        assert str(end.payload["response"]).startswith("assistant: echo: ")
        assert KEY not in repr(start.payload)
    embedding_events = debug.get_event_pairs(CBEventType.EMBEDDING)
    assert len(embedding_events) == 3  # the documents, then each query
    assert KEY not in repr(embedding_events)


@pytest.mark.usefixtures("no_stray_loop")
def test_upstream_errors_reach_the_query_as_rag_llm_errors(server: UpstreamServer,
                                                           settings: Any) -> None:
    with RagLLMEmbedding(config=embedding_config(server)) as embed_model, \
            RagLLM(config=chat_config(server)) as llm:
        settings.embed_model, settings.llm = embed_model, llm
        server.add_fault(Fault(status=503, path="/embeddings"))
        with pytest.raises(errors.ServerError) as built:
            VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
        assert built.value.status == 503

        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
        server.add_fault(Fault(status=429, path="/chat/completions"))
        with pytest.raises(errors.RateLimitError) as queried:
            index.as_query_engine().query(QUESTION)
        assert queried.value.status == 429
        assert KEY not in str(queried.value)


def test_an_in_process_embedder_can_be_borrowed() -> None:
    pytest.importorskip("onnxruntime")
    with create_provider("embedding", {"type": "local"}) as local:
        embed_model = RagLLMEmbedding(provider=local)
        assert not embed_model.owns_provider
        assert embed_model.model_name == "all-MiniLM-L6-v2"
        assert embed_model.embed_batch_size == local.batch_size
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS],
                                                embed_model=embed_model)
        (best,) = index.as_retriever(similarity_top_k=1).retrieve("What colour are bananas?")
        assert best.node.get_content() == TEXTS[2]
        embed_model.close()
        assert local.embed(["still open"])
