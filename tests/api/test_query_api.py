"""``/v1/query``: answers with citations, whole or streamed as server-sent events."""

from __future__ import annotations

import json
from typing import Any

from apikit import AppFactory, upload
from fastapi.testclient import TestClient

from rag_llm.rag.answer import EXTRACTIVE_NOTE, NO_SOURCES

TEXT = "Lighthouse keepers trimmed the lamp wicks every evening."
OTHER = "Sourdough starters need regular feeding with flour and water."


def events(body: str) -> list[tuple[str, Any]]:
    parsed = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


def test_query_answers_with_the_chat_model_and_cites_the_best_chunk(
    client: TestClient,
) -> None:
    upload(client, ("keepers.txt", TEXT.encode()), ("bread.txt", OTHER.encode()))
    response = client.post("/v1/query", json={"question": TEXT, "top_k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "generated"
    assert body["answer"].startswith("echo: Sources:\n\n[1] ")
    first = body["citations"][0]
    assert (first["number"], first["source"], first["text"]) == (1, "keepers.txt", TEXT)
    assert first["score"] == 1.0
    assert first["chunk_index"] == 0
    assert len(body["citations"]) == 2


def test_streamed_query_sends_citations_then_deltas_then_done(client: TestClient) -> None:
    upload(client, ("keepers.txt", TEXT.encode()))
    whole = client.post("/v1/query", json={"question": TEXT}).json()
    with client.stream("POST", "/v1/query", json={"question": TEXT, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        received = events(r.read().decode())
    assert received[0] == ("citations", whole["citations"])
    assert received[-1] == ("done", {"mode": "generated"})
    deltas = [data["text"] for kind, data in received[1:-1] if kind == "delta"]
    assert len(deltas) == len(received) - 2 > 3
    assert "".join(deltas) == whole["answer"]


def test_without_a_chat_model_the_answer_is_extractive_and_says_so(
    make_app: AppFactory,
) -> None:
    with TestClient(make_app(chat=False)) as client:
        upload(client, ("keepers.txt", TEXT.encode()))
        body = client.post("/v1/query", json={"question": TEXT}).json()
        status = client.get("/v1/status").json()
    assert body["mode"] == "extractive"
    assert body["answer"] == f"{EXTRACTIVE_NOTE}\n\n[1] {TEXT}"
    assert status == {"embedding": "openai/text-embedding-3-small", "chat": None,
                      "mode": "extractive", "documents": 1, "chunks": 1}


def test_with_no_documents_the_answer_says_there_is_nothing_to_answer_from(
    client: TestClient,
) -> None:
    body = client.post("/v1/query", json={"question": "anything?"}).json()
    assert body == {"question": "anything?", "answer": NO_SOURCES, "mode": "no_sources",
                    "citations": []}


def test_a_query_searches_only_the_documents_it_names(client: TestClient) -> None:
    upload(client, ("notes/keepers.txt", TEXT.encode()), ("bread.txt", OTHER.encode()))
    ids = {d["source"]: d["id"] for d in client.get("/v1/documents").json()}

    def sources(**where: Any) -> list[str]:
        body = client.post("/v1/query", json={"question": TEXT, **where}).json()
        return [c["source"] for c in body["citations"]]

    assert sources() == ["notes/keepers.txt", "bread.txt"]
    assert sources(documents=[ids["bread.txt"]]) == ["bread.txt"]
    assert sources(source_prefix="notes/") == ["notes/keepers.txt"]
    assert sources(documents=[ids["bread.txt"]], source_prefix="notes/") == []
    with client.stream("POST", "/v1/query", json={"question": TEXT, "stream": True,
                                                   "source_prefix": "bread"}) as r:
        assert [c["source"] for c in events(r.read().decode())[0][1]] == ["bread.txt"]
    refused = client.post("/v1/query", json={"question": TEXT, "documents": "bread"})
    assert refused.status_code == 422
