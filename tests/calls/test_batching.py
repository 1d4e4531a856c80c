"""Embedding batching: large lists split, concurrent calls coalesced, each caller's own vectors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import provider_config

from rag_llm.errors import UpstreamError
from rag_llm.providers import EmbeddingProvider, create_provider
from rag_llm.testing import Fault, UpstreamServer


def embedder(server: UpstreamServer, **overrides: Any) -> EmbeddingProvider:
    return create_provider("embedding", provider_config(server, **overrides))


def expected(server: UpstreamServer, texts: list[str]) -> list[list[float]]:
    return [pytest.approx(server.expected_embedding(t)) for t in texts]  # type: ignore[misc]


def inputs(server: UpstreamServer) -> list[list[str]]:
    return [r.json["input"] for r in server.requests if r.path == "/v1/embeddings"]


async def test_a_long_list_goes_out_as_concurrent_batches_in_order(
    upstream: UpstreamServer,
) -> None:
    upstream.delay = 0.1  # keeps every batch in flight at once
    texts = [f"text {i}" for i in range(10)]
    async with embedder(upstream, max_batch_size=4) as provider:
        vectors = await provider.aembed(texts)
    assert vectors == expected(upstream, texts)
    assert sorted(map(len, inputs(upstream))) == [2, 4, 4]
    assert upstream.max_concurrent_connections == 3


def test_a_long_list_goes_out_in_batches_from_sync_code(upstream: UpstreamServer) -> None:
    texts = [f"text {i}" for i in range(5)]
    with embedder(upstream, max_batch_size=2) as provider:
        assert provider.embed(texts) == expected(upstream, texts)
    assert inputs(upstream) == [texts[0:2], texts[2:4], texts[4:5]]
    assert upstream.connections_accepted == 1


async def test_concurrent_calls_share_requests_and_each_gets_its_own_vectors(
    upstream: UpstreamServer,
) -> None:
    calls = [[f"call {c} text {i}" for i in range(1 + c % 3)] for c in range(50)]
    async with embedder(upstream, max_batch_size=64, coalesce_window=0.01) as provider:
        results = await asyncio.gather(*(provider.aembed(texts) for texts in calls))
    for texts, vectors in zip(calls, results, strict=True):
        assert vectors == expected(upstream, texts)
    sent = inputs(upstream)
    assert sum(map(len, sent)) == sum(map(len, calls)) == 99
    assert len(sent) == 2  # 99 texts in requests of at most 64
    assert max(map(len, sent)) == 64


async def test_a_failed_request_fails_only_the_calls_that_had_texts_in_it(
    upstream: UpstreamServer,
) -> None:
    upstream.add_fault(Fault(status=400, body={"error": {"message": "input too long"}}))
    calls = [[f"call {c} a", f"call {c} b"] for c in range(3)]
    async with embedder(upstream, max_batch_size=2, coalesce_window=0.01) as provider:
        results = await asyncio.gather(*(provider.aembed(texts) for texts in calls),
                                       return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], UpstreamError)
    assert "input too long" in str(failed[0])
    for texts, result in zip(calls, results, strict=True):
        if not isinstance(result, BaseException):
            assert result == expected(upstream, texts)


async def test_a_call_split_across_coalesced_requests_gets_its_vectors_in_order(
    upstream: UpstreamServer,
) -> None:
    big = [f"big {i}" for i in range(5)]
    small = ["small"]
    async with embedder(upstream, max_batch_size=2, coalesce_window=0.01) as provider:
        got_big, got_small = await asyncio.gather(provider.aembed(big), provider.aembed(small))
    assert got_big == expected(upstream, big)
    assert got_small == expected(upstream, small)
    assert sorted(map(len, inputs(upstream))) == [2, 2, 2]


async def test_a_cancelled_call_leaves_the_others_whole(upstream: UpstreamServer) -> None:
    upstream.delay = 0.05
    async with embedder(upstream, coalesce_window=0.05) as provider:
        doomed = asyncio.create_task(provider.aembed(["doomed"]))
        kept = asyncio.create_task(provider.aembed(["kept"]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await kept == expected(upstream, ["kept"])
        with pytest.raises(asyncio.CancelledError):
            await doomed
    assert inputs(upstream) == [["kept"]]


def test_token_bounds_close_a_batch_before_its_text_count_does() -> None:
    from rag_llm.calls.batching import batch_bounds

    texts = ["a" * 40, "b" * 40, "c" * 4, "d" * 400, "e" * 4]  # 10, 10, 1, 100, 1 tokens
    assert batch_bounds(texts, size=10, max_tokens=20) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert batch_bounds(texts, size=2, max_tokens=1000) == [(0, 2), (2, 4), (4, 5)]
    assert batch_bounds(texts, size=10) == [(0, 5)]


@pytest.mark.parametrize("mode", ["async", "sync", "coalesced"])
async def test_max_batch_tokens_bounds_every_request(upstream: UpstreamServer, mode: str) -> None:
    texts = [f"{i:02d}" + "x" * 38 for i in range(12)]  # 10 estimated tokens each
    settings: dict[str, Any] = {"max_batch_size": 100, "max_batch_tokens": 35}
    if mode == "coalesced":
        settings["coalesce_window"] = 0.01
    async with embedder(upstream, **settings) as provider:
        if mode == "sync":
            vectors = await asyncio.to_thread(provider.embed, texts)
        elif mode == "async":
            vectors = await provider.aembed(texts)
        else:
            halves = await asyncio.gather(provider.aembed(texts[:6]), provider.aembed(texts[6:]))
            vectors = halves[0] + halves[1]
    assert vectors == expected(upstream, texts)
    assert sorted(map(len, inputs(upstream))) == [3, 3, 3, 3]
