"""Bad input gets the right 4xx and a clear message, secrets stay hidden, the service goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import AppFactory, upload
from fastapi.testclient import TestClient
from structlog.testing import capture_logs
from support import provider_config

from rag_llm.api import create_app
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagService, RagSettings
from rag_llm.testing import Fault, UpstreamServer

SERVICE_KEY = "svc-key-0123456789abcdef"
TEXT = b"Lighthouse keepers trimmed the lamp wicks every evening."


def assert_still_serving(client: TestClient, **headers: str) -> None:
    response = client.post("/v1/query", json={"question": "lamp wicks"}, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("body", "field", "message"), [
    ({}, "question", "Field required"),
    ({"question": ""}, "question", "at least 1 character"),
    ({"question": "   "}, "question", "must not be blank"),
    ({"question": 42}, "question", "valid string"),
    ({"question": "q", "top_k": "5"}, "top_k", "valid integer"),
    ({"question": "q", "top_k": 0}, "top_k", "greater than or equal to 1"),
    ({"question": "q", "top_k": 51}, "top_k", "less than or equal to 50"),
    ({"question": "q", "stream": "yes"}, "stream", "valid boolean"),
    ({"question": "q", "topk": 3}, "topk", "Extra inputs are not permitted"),
    ({"question": "x" * 4001}, "question", "at most 4000 characters"),
    (["question"], "body", "valid dictionary"),
])
def test_invalid_query_bodies_are_422s_naming_the_field(
    client: TestClient, body: Any, field: str, message: str,
) -> None:
    response = client.post("/v1/query", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["detail"] == f"invalid request: {field}"
    [error] = payload["errors"]
    assert error["field"] == field
    assert message in error["message"]
    assert_still_serving(client)


def test_malformed_json_is_a_422(client: TestClient) -> None:
    response = client.post("/v1/query", content=b'{"question": ',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON decode error" in response.json()["errors"][0]["message"]


def test_a_body_over_the_limit_is_a_413_before_it_is_read(client: TestClient) -> None:
    response = client.post("/v1/query", json={"question": "q" * 70_000})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body is over the limit of 65536 bytes"}
    assert_still_serving(client)


def test_a_chunked_body_over_the_limit_is_a_413_too(client: TestClient) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(100):
            yield b"q" * 1000
        yield b'"}'

    response = client.post("/v1/query", content=body(),
                           headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "over the limit of 65536 bytes" in response.json()["detail"]
    assert_still_serving(client)


def test_an_upload_over_its_limit_is_a_413(make_app: AppFactory) -> None:
    with TestClient(make_app(max_upload_bytes=10_000)) as client:
        response = upload(client, ("big.txt", b"word " * 5_000))
        assert response.status_code == 413
        assert response.json()["detail"] == "request body is over the limit of 10000 bytes"
        assert upload(client, ("small.txt", TEXT)).status_code == 200


@pytest.fixture
def keyed(make_app: AppFactory) -> Iterator[TestClient]:
    with TestClient(make_app(api_key=SERVICE_KEY)) as client:
        yield client


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"),
    ({"Authorization": "Bearer wrong-key"}, "invalid API key"),
    ({"X-API-Key": SERVICE_KEY[:-1]}, "invalid API key"),
    ({"Authorization": f"Basic {SERVICE_KEY}"}, "missing API key: send 'Authorization: "
                                                "Bearer KEY' or 'X-API-Key: KEY'"),
])
def test_a_missing_or_wrong_api_key_is_a_401(
    keyed: TestClient, headers: dict[str, str], message: str,
) -> None:
    for method, path in [("GET", "/v1/documents"), ("POST", "/v1/query"),
                         ("DELETE", "/v1/documents/x"), ("GET", "/v1/status")]:
        response = keyed.request(method, path, json={"question": "q"}, headers=headers)
        assert response.status_code == 401, path
        assert response.json() == {"detail": message}
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_right_api_key_is_accepted_either_way_and_never_shown(keyed: TestClient) -> None:
    with capture_logs() as logs:
        bearer = {"Authorization": f"Bearer {SERVICE_KEY}"}
        assert upload(keyed, ("keepers.txt", TEXT), **bearer).status_code == 200
        assert_still_serving(keyed, **bearer)
        assert_still_serving(keyed, **{"X-API-Key": SERVICE_KEY})
        wrong = keyed.get("/v1/documents", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    assert SERVICE_KEY not in json.dumps(logs, default=str)
    assert SERVICE_KEY not in repr(keyed.app.state.rag.settings)  # type: ignore[attr-defined]
    # Health and the API docs stay open.
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/docs").status_code == 200


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/documents", "/v1/documents/{document_id}", "/v1/query", "/v1/status",
            "/health"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "text/html" in client.get("/docs").headers["content-type"]
    assert client.get("/dashboard").status_code == 200


def test_a_failing_provider_is_a_502_with_its_message_and_the_service_goes_on(
    client: TestClient, upstream: UpstreamServer,
) -> None:
    assert upload(client, ("keepers.txt", TEXT)).status_code == 200
    upstream.add_fault(Fault(status=503, path="/embeddings",
                             body={"error": {"message": "model overloaded"}}))
    response = client.post("/v1/query", json={"question": "lamp"})
    assert response.status_code == 502
    detail = response.json()["detail"]
    assert detail.startswith("a model provider failed: openai: HTTP 503 from http://127.0.0.1:")
    assert "model overloaded" in detail
    assert "sk-" not in detail
    assert_still_serving(client)


def test_an_unexpected_error_is_a_500_without_a_stack_trace(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def crash(self: RagService, question: str, top_k: int | None = None,
                    where: object = None) -> None:
        raise ZeroDivisionError("internal detail that must not leak")

    monkeypatch.setattr(RagService, "query", crash)
    with TestClient(make_app(), raise_server_exceptions=False) as client, \
            capture_logs() as logs:
        response = client.post("/v1/query", json={"question": "q"})
        assert client.get("/v1/documents").status_code == 200
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "Traceback" not in response.text
    assert [e["error"] for e in logs if e["event"] == "request_crashed"] == [
        "ZeroDivisionError"]


def test_a_request_after_the_locator_closed_is_a_503_saying_so(
    upstream: UpstreamServer, tmp_path: Path,
) -> None:
    locator = ServiceLocator(Settings(providers={"embedding": provider_config(upstream)}))
    asyncio.run(locator.cleanup())
    app = create_app(locator, rag_settings=RagSettings(data_dir=tmp_path / "data"))
    with TestClient(app) as client:
        response = client.get("/v1/documents")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("the service is shutting down:")
    assert "'embedding'" in detail
