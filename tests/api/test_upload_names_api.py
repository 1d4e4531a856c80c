"""Uploads that are binary, empty, or named like paths: refused with a 4xx that says why,
or stored with their name as a label. An upload never becomes a file: the data directory
holds the store's own files after any of them, and nothing appears outside it.

Sizes over the limit are test_hygiene_api.py's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apikit import AppFactory, upload
from fastapi.testclient import TestClient

TEXT = b"Lighthouses keep ships off the rocks at night."
# What the store writes under the data directory (WAL files last until it closes).
STORE_FILES = {f"data/{name}" for name in (
    "rag.sqlite", "rag.sqlite-shm", "rag.sqlite-wal", "vectors.f32")}


def _raw_upload(client: TestClient, filename: bytes, content: bytes = TEXT) -> object:
    """A multipart upload whose filename goes on the wire byte for byte (httpx would
    percent-escape a NUL or a line break)."""
    body = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="' + filename
            + b'"\r\nContent-Type: text/plain\r\n\r\n' + content + b"\r\n--B--\r\n")
    return client.post("/v1/documents", content=body,
                       headers={"content-type": "multipart/form-data; boundary=B"})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def watched(make_app: AppFactory, tmp_path: Path) -> tuple[TestClient, Path]:
    (tmp_path / "outside").mkdir()
    return TestClient(make_app()), tmp_path


@pytest.mark.parametrize(("name", "source"), [
    ("../../x.txt", "../../x.txt"),
    ("/etc/x.txt", "etc/x.txt"),
    ("..\\..\\x.txt", "../../x.txt"),
    ("outside/../../x.txt", "outside/../../x.txt"),
    ("q" * 508 + ".txt", "q" * 508 + ".txt"),
])
def test_a_path_for_a_name_is_a_label_and_writes_no_file(
        watched: tuple[TestClient, Path], name: str, source: str) -> None:
    client, root = watched
    with client:
        response = upload(client, (name, TEXT))
        assert response.status_code == 200, response.text
        [document] = response.json()["documents"]
        assert document["source"] == source
        assert client.get(f"/v1/documents/{document['id']}").json()["source"] == source
    # Nothing but the store's files anywhere under tmp_path (the data directory's parent).
    assert "data/rag.sqlite" in _files(root) <= STORE_FILES
    assert not Path("/etc/x.txt").exists()


@pytest.mark.parametrize("filename", [b"n\x00ul.txt", b"../../\x00x.txt", b"tab\there.txt",
                                      b"bell\x07.md", b"del\x7f.txt"])
def test_a_name_with_a_control_character_is_a_422(
        watched: tuple[TestClient, Path], filename: bytes) -> None:
    client, root = watched
    with client:
        response = _raw_upload(client, filename)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == (
            "files[0] needs a file name without control characters")
        assert client.get("/v1/documents").json() == []
    assert _files(root) <= STORE_FILES


@pytest.mark.parametrize(("name", "content", "status", "says"), [
    ("q" * 600 + ".txt", TEXT, 422, "needs a file name of 1 to 512 characters"),
    ("   ", TEXT, 422, "needs a file name of 1 to 512 characters"),
    ("", TEXT, 422, "Expected UploadFile"),
    ("empty.txt", b"", 422, "is empty"),
    ("blank.md", b"  \n\n\t", 422, "is empty"),
    ("noise.txt", os.urandom(4096), 422, "is binary, not text"),
    ("zeros.txt", b"\x00" * 100, 422, "is binary, not text"),
    ("noise.pdf", os.urandom(4096), 422, "is not a readable PDF"),
    ("noise.bin", os.urandom(4096), 422, "has an unsupported type '.bin'"),
    ("..", TEXT, 422, "has an unsupported type '(no suffix)'"),
])
def test_binary_empty_and_nameless_uploads_are_422s_saying_why(
        watched: tuple[TestClient, Path], name: str, content: bytes, status: int,
        says: str) -> None:
    client, root = watched
    with client:
        response = upload(client, (name, content))
        assert response.status_code == status, response.text
        assert says in response.text
        assert client.get("/v1/documents").json() == []
    assert _files(root) <= STORE_FILES
