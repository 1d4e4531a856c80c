"""``/v1/documents``: upload, list, show and delete over HTTP."""

from __future__ import annotations

from apikit import upload
from fastapi.testclient import TestClient

GUIDE = ("guide.md", b"# Guide\n\nHow to use the thing. It has two sentences.")
NOTES = ("notes.txt", b"Plain notes about lighthouses and their keepers.")
BROKEN = ("broken.pdf", b"%PDF-1.4 this is not a PDF")


def test_upload_stores_good_files_and_names_the_bad_one(client: TestClient) -> None:
    response = upload(client, GUIDE, NOTES, BROKEN)
    assert response.status_code == 200
    body = response.json()
    assert [(d["source"], d["status"], d["chunks"]) for d in body["documents"]] == [
        ("guide.md", "added", 1), ("notes.txt", "added", 1)]
    [failure] = body["failures"]
    assert failure["source"] == "broken.pdf"
    assert failure["error"].startswith("is not a readable PDF")
    listed = client.get("/v1/documents").json()
    assert [d["source"] for d in listed] == ["guide.md", "notes.txt"]
    assert listed[0]["media_type"] == "text/markdown"
    assert listed[0]["title"] == "Guide"


def test_reupload_is_idempotent_and_a_changed_file_replaces_its_chunks(
    client: TestClient,
) -> None:
    [added] = upload(client, GUIDE).json()["documents"]
    [unchanged] = upload(client, GUIDE).json()["documents"]
    assert (unchanged["id"], unchanged["status"]) == (added["id"], "unchanged")
    changed = ("guide.md", b"# Guide\n\nNew text.\n\nAnd a second paragraph here.")
    [updated] = upload(client, changed).json()["documents"]
    assert (updated["id"], updated["status"]) == (added["id"], "updated")
    assert client.get(f"/v1/documents/{added['id']}").json()["sha256"] != ""
    assert client.app.state.rag.built.store.chunk_count() == 1  # type: ignore[attr-defined]


def test_get_and_delete_by_id(client: TestClient) -> None:
    [document] = upload(client, NOTES).json()["documents"]
    shown = client.get(f"/v1/documents/{document['id']}")
    assert shown.status_code == 200
    assert shown.json()["source"] == "notes.txt"
    assert client.delete(f"/v1/documents/{document['id']}").status_code == 204
    missing = client.delete(f"/v1/documents/{document['id']}")
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no document with id {document['id']!r}"}
    assert client.get(f"/v1/documents/{document['id']}").status_code == 404
    assert client.get("/v1/documents").json() == []


def test_an_upload_where_every_file_fails_is_a_422_naming_them(client: TestClient) -> None:
    response = upload(client, BROKEN, ("sheet.xlsx", b"PK\x03\x04"))
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "no file could be ingested"
    assert [f["source"] for f in body["failures"]] == ["broken.pdf", "sheet.xlsx"]
    assert "unsupported type '.xlsx'" in body["failures"][1]["error"]


def test_an_upload_without_files_is_a_422_naming_the_field(client: TestClient) -> None:
    response = client.post("/v1/documents", data={"other": "x"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "files"
