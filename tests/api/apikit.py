"""Helpers of the HTTP API tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

AppFactory = Callable[..., FastAPI]


def upload(client: TestClient, *files: tuple[str, bytes], **headers: str) -> Any:
    """POST ``files`` (name, content) to ``/v1/documents``."""
    return client.post("/v1/documents", files=[("files", f) for f in files], headers=headers)
