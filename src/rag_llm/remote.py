"""Talking to a running ``rag-llm serve`` from the command line, instead of opening the
store and the embedding model again in every command.

``serve`` announces itself in its data directory (``service.json``: its URL and process id)
while it runs; a command run on the same data directory, or with ``--url``, sends its work
there over HTTP. The standard library's ``urllib`` does it: a command that talks to a
service imports no model, store or HTTP pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from rag_llm.errors import RagLLMError

if TYPE_CHECKING:
    from rag_llm.rag.store import SearchFilter

__all__ = ["SERVICE_FILE", "RemoteError", "ServiceClient", "announced", "running_service"]

SERVICE_FILE: Final = "service.json"
# A service that does not answer its health check within this long is taken as gone.
_PROBE_TIMEOUT: Final = 0.5


class RemoteError(RagLLMError):
    """The running service refused a command or could not be reached."""


@contextlib.contextmanager
def announced(data_dir: Path, host: str, port: int) -> Iterator[None]:
    """Say in ``data_dir`` that a service on ``host:port`` serves it, for as long as it runs."""
    local = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
    shown = f"[{local}]" if ":" in local else local
    path = data_dir / SERVICE_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"url": f"http://{shown}:{port}", "pid": os.getpid()}))
    except OSError:  # a read-only data directory: commands then work on the store directly
        yield
        return
    def withdraw() -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    # uvicorn ends by raising the SIGTERM it caught again, once its own handler is gone:
    # this one withdraws the announcement, then lets the signal end the process as before.
    previous = signal.getsignal(signal.SIGTERM)

    def on_terminate(signum: int, frame: FrameType | None) -> None:
        withdraw()
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        signal.raise_signal(signum)

    with contextlib.suppress(ValueError):  # not the main thread: no handler, same file
        signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        withdraw()
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGTERM) is on_terminate:
                signal.signal(signal.SIGTERM, previous)


def running_service(data_dir: Path) -> str | None:
    """The URL of the service announced in ``data_dir``, if its process is alive."""
    try:
        announced_as = json.loads((data_dir / SERVICE_FILE).read_text())
        url, pid = str(announced_as["url"]), int(announced_as["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, under another user
        pass
    return url


class ServiceClient:
    """The HTTP API of a running service, as the commands need it."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise RemoteError(f"the service URL must be http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self._headers = {"accept": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return f"<ServiceClient {self.url!r}>"

    def reachable(self) -> bool:
        """Whether the service answers its health check at once."""
        try:
            with urllib.request.urlopen(f"{self.url}/health",  # noqa: S310 (http(s) only)
                                        timeout=_PROBE_TIMEOUT):
                return True
        except (OSError, ValueError):
            return False

    def _open(self, method: str, path: str, body: Any = None,
              timeout: float = 300.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["content-type"] = "application/json"
        request = urllib.request.Request(f"{self.url}{path}", data=data,  # noqa: S310
                                         headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (likewise)
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            exc.close()
            raise RemoteError(f"the service at {self.url} answered {exc.code}: {detail}") \
                from None
        except OSError as exc:
            raise RemoteError(f"the service at {self.url} cannot be reached: {exc}") from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            return json.loads(response.read()) if response.status != 204 else None

    def documents(self) -> list[dict[str, Any]]:
        documents: list[dict[str, Any]] = self._json("GET", "/v1/documents")
        return documents

    def delete(self, document_id: str) -> bool:
        """Remove a document; False if there was none."""
        try:
            self._json("DELETE", f"/v1/documents/{urllib.parse.quote(document_id, safe='')}")
        except RemoteError as exc:
            if " answered 404:" in str(exc):
                return False
            raise
        return True

    def answer(self, question: str, top_k: int | None,
               where: SearchFilter | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self._json("POST", "/v1/query",
                                            _query(question, top_k, where))
        return answer

    def events(self, question: str, top_k: int | None,
               where: SearchFilter | None = None) -> Iterator[tuple[str, Any]]:
        """The answer as the service streams it: (event, data) pairs, as they arrive."""
        with self._open("POST", "/v1/query", {**_query(question, top_k, where),
                                              "stream": True}) as response:
            event = "message"
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    yield event, json.loads(line[5:])
                    event = "message"


def _query(question: str, top_k: int | None, where: SearchFilter | None) -> dict[str, Any]:
    body: dict[str, Any] = {"question": question}
    if top_k is not None:
        body["top_k"] = top_k
    if where is not None and where.document_ids is not None:
        body["documents"] = sorted(where.document_ids)
    if where is not None and where.source_prefix is not None:
        body["source_prefix"] = where.source_prefix
    return body


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
    except (OSError, ValueError):
        return error.reason or "no detail"
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else json.dumps(detail)
