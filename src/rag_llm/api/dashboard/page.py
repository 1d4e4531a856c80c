"""The dashboard's page and the static files it loads, read from the installed package.

Everything the page needs ships in ``static/``, so the dashboard works without network
access: the page itself, its script and style, and uPlot (MIT, vendored from npm).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Final

__all__ = ["ASSETS", "Asset", "asset", "page_html"]


@dataclass(frozen=True, slots=True)
class Asset:
    """A static file's bytes and media type."""

    body: bytes
    media_type: str


# Served names and their media types; nothing outside this table is ever read.
ASSETS: Final = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}


@cache
def _read(name: str) -> bytes:
    return files("rag_llm.api.dashboard").joinpath("static", name).read_bytes()


def asset(name: str) -> Asset | None:
    """The static file ``name``, or None when it is not one the dashboard serves."""
    media_type = ASSETS.get(name)
    return None if media_type is None else Asset(_read(name), media_type)


def page_html() -> str:
    """The dashboard page; it loads its assets and events by paths relative to itself."""
    return _read("index.html").decode()
