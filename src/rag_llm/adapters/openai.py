"""The OpenAI API family: OpenAI, Azure OpenAI, vLLM, Ollama, TEI and compatible servers.

Building requests and parsing responses happens here, once, for sync and async callers
alike; sending is the call layer's (:mod:`rag_llm.calls`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from rag_llm import __version__
from rag_llm.adapters import Message
from rag_llm.adapters._errors import upstream_error
from rag_llm.adapters._sse import DONE, sse_data
from rag_llm.config import ProviderConfig
from rag_llm.errors import ConfigError, MalformedResponseError, UpstreamError
from rag_llm.transport import Request, Response
from rag_llm.validation import redact_url

__all__ = ["AzureOpenAIAPI", "ChatStreamParser", "ChunkStreamParser", "OpenAIAPI"]

_USER_AGENT: Final = f"rag-llm/{__version__}"
# Headers of a relayed request that are not passed on: its client's credentials, and what
# belongs to its own connection (the transport frames, encodes and routes the request).
_NOT_RELAYED: Final = frozenset({
    "authorization", "api-key", "proxy-authorization", "host", "content-length",
    "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "upgrade", "accept-encoding",
})


class OpenAIAPI:
    """Requests and responses of an OpenAI-compatible API at ``config.base_url``."""

    def __init__(self, config: ProviderConfig) -> None:
        # orjson: an embedding's 1,536 floats decode 15x faster than with json.loads, which
        # was most of a pooled request's CPU time. Imported here, off `import rag_llm`.
        import orjson

        self._dumps = orjson.dumps
        self._loads = orjson.loads
        self.config = config
        self.provider = config.name
        self._secret = config.api_key.get_secret_value() if config.api_key else None
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": _USER_AGENT,
        }
        # Credentials and the configured headers: what a relayed request cannot override.
        self._own_headers = {**self._auth_headers(),
                             **{k.lower(): v for k, v in config.headers.items()}}
        headers.update(self._own_headers)
        # What an upstream that echoes its request must not get into an error: the key and
        # the configured header values long enough to be credentials (a short one, as "1",
        # would blank ordinary words of the message).
        self._secrets = sorted({v for v in self._own_headers.values() if len(v) >= 8}
                               | ({self._secret} if self._secret else set()), key=len,
                               reverse=True)
        self._headers: Mapping[str, str] = headers
        self._stream_headers = {**headers, "accept": "text/event-stream"}
        # Scheme, host, port and path: what errors and events may show of this endpoint.
        self.endpoint = redact_url(config.base_url)
        self._embeddings_url = self.url("embeddings")
        self._chat_url = self.url("chat/completions")

    def _auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._secret}"} if self._secret else {}

    def url(self, operation: str) -> str:
        return f"{self.config.base_url}/{operation}"

    def _request(self, url: str, body: Mapping[str, Any], *, stream: bool = False) -> Request:
        return Request(
            method="POST",
            url=url,
            headers=self._stream_headers if stream else self._headers,
            content=self._dumps(body),
            endpoint=redact_url(url),
        )

    def get_request(self, operation: str) -> Request:
        """A GET of ``operation`` (e.g. ``models``): cheap, for health checks and warm-up."""
        url = self.url(operation)
        return Request(method="GET", url=url, headers=self._headers, endpoint=redact_url(url))

    def relay_request(self, method: str, operation: str, query: str,
                      headers: Mapping[str, str], content: bytes | None) -> Request:
        """``operation`` as another client built it (an SDK's): its method, query, headers
        and body as given, with this endpoint's URL and credentials.

        The client's own credentials and connection headers are dropped: the endpoint's
        key and the configured headers are sent instead, and the transport frames the body.
        """
        url = self._relay_url(operation)
        if query:
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        relayed = {name: value for name, value in
                   ((k.lower(), v) for k, v in headers.items()) if name not in _NOT_RELAYED}
        return Request(method=method, url=url,
                       headers={**self._headers, **relayed, **self._own_headers},
                       content=content, endpoint=redact_url(url))

    def _relay_url(self, operation: str) -> str:
        return self.url(operation)

    # -- embeddings --------------------------------------------------------------

    def embeddings_request(self, texts: Sequence[str]) -> Request:
        body: dict[str, Any] = {"model": self.config.model, "input": list(texts)}
        if self.config.dimensions is not None:
            body["dimensions"] = self.config.dimensions
        return self._request(self._embeddings_url, body)

    def parse_embeddings(self, request: Request, response: Response,
                         count: int) -> list[list[float]]:
        data = self._json(request, response).get("data")
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise self.malformed(request, f"expected {count} embeddings in 'data', got {got}")
        try:
            ordered = sorted(data, key=lambda item: item["index"])
            vectors = [item["embedding"] for item in ordered]
        except (KeyError, TypeError):
            raise self.malformed(request, "each 'data' item needs 'index' and 'embedding'") \
                from None
        if [item["index"] for item in ordered] != list(range(count)):
            raise self.malformed(request, f"each 'index' from 0 to {count - 1} must come once")
        _check_vectors(self, request, vectors)
        return vectors

    # -- chat --------------------------------------------------------------------

    def chat_request(self, messages: Sequence[Message], params: Mapping[str, Any],
                     *, stream: bool = False) -> Request:
        body: dict[str, Any] = {"model": self.config.model, "messages": list(messages), **params}
        if stream:
            body["stream"] = True
        return self._request(self._chat_url, body, stream=stream)

    def parse_chat(self, request: Request, response: Response) -> str:
        try:
            content = self._json(request, response)["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self.malformed(request, "no 'choices[0].message.content'") from None
        if not isinstance(content, str):
            raise self.malformed(request, "'choices[0].message.content' is not text")
        return content

    def parse_completion(self, request: Request, response: Response) -> dict[str, Any]:
        completion = self._json(request, response)
        choices = completion.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                isinstance(choice, dict) and isinstance(choice.get("message"), dict)
                for choice in choices):
            raise self.malformed(request, "no 'choices' with a 'message' each")
        return completion

    def stream_parser(self, request: Request) -> ChatStreamParser:
        return ChatStreamParser(self, request)

    def chunk_parser(self, request: Request) -> ChunkStreamParser:
        return ChunkStreamParser(self, request)

    # -- shared ------------------------------------------------------------------

    def error(self, request: Request, status: int, headers: Mapping[str, str],
              content: bytes) -> UpstreamError:
        return upstream_error(provider=self.provider, endpoint=request.endpoint, status=status,
                              headers=headers, content=content, secrets=self._secrets)

    def _json(self, request: Request, response: Response) -> dict[str, Any]:
        if response.status >= 400:
            raise self.error(request, response.status, response.headers, response.content)
        try:
            body = self._loads(response.content)
        except ValueError:
            raise self.malformed(request, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise self.malformed(request, "the body is not a JSON object")
        return body

    def malformed(self, request: Request, detail: str) -> MalformedResponseError:
        return MalformedResponseError(provider=self.provider, endpoint=request.endpoint,
                                      detail=detail)


class _EventParser:
    """Decodes the ``data:`` events of one streamed chat completion into chunk objects.

    Lines after ``[DONE]`` are accepted and ignored: the caller reads the body to its end so
    that the connection can go back to the pool.
    """

    __slots__ = ("_api", "_request", "done", "received")

    def __init__(self, api: OpenAIAPI, request: Request) -> None:
        self._api = api
        self._request = request
        self.done = False
        self.received: list[str] = []

    def _chunk(self, line: str) -> dict[str, Any] | None:
        payload = None if self.done else sse_data(line)
        if payload is None or not payload.strip():
            return None
        if payload.strip() == DONE:
            self.done = True
            return None
        try:
            chunk = self._api._loads(payload)
        except ValueError:
            raise self._api.malformed(self._request, "a stream event is not JSON") from None
        if not isinstance(chunk, dict):
            raise self._api.malformed(self._request, "a stream event is not a JSON object")
        if "error" in chunk:
            raise self._api.error(self._request, 200, {}, payload.encode())
        text = _delta_text(chunk)
        if text:
            self.received.append(text)
        return chunk


class ChatStreamParser(_EventParser):
    """Turns the lines of one streamed chat completion into text deltas."""

    __slots__ = ()

    def feed(self, line: str) -> str | None:
        """The text delta ``line`` carries, or None."""
        chunk = self._chunk(line)
        return None if chunk is None else _delta_text(chunk) or None


class ChunkStreamParser(_EventParser):
    """Turns the lines of one streamed chat completion into its chunk objects, whole:
    deltas of text, role, tool calls and finish reasons, and the usage-only last chunk."""

    __slots__ = ()

    def feed(self, line: str) -> dict[str, Any] | None:
        """The chunk ``line`` carries, or None for comments, blank lines and ``[DONE]``."""
        return self._chunk(line)


def _check_vectors(api: OpenAIAPI, request: Request, vectors: list[Any]) -> None:
    """Raise unless every vector is a non-empty list of numbers, all of one length.

    ``sum`` finds a string, null or list anywhere in a vector at C speed (8 us for 1,536
    floats, an eighth of decoding them); it lets booleans through, as Python counts them ints.
    """
    dim = len(vectors[0]) if vectors and isinstance(vectors[0], list) else 0
    for vector in vectors:
        if not isinstance(vector, list) or not vector:
            raise api.malformed(request, "'embedding' must be a non-empty list of numbers")
        try:
            sum(vector)
        except TypeError:
            raise api.malformed(request, "'embedding' must be a non-empty list of numbers") \
                from None
        if len(vector) != dim:
            raise api.malformed(request, f"embeddings of different lengths: {dim} and "
                                         f"{len(vector)}")


def _delta_text(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None  # e.g. a final usage-only chunk
    delta = choices[0].get("delta")
    text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else None


class AzureOpenAIAPI(OpenAIAPI):
    """Azure OpenAI: deployment URLs, an ``api-version`` query and an ``api-key`` header."""

    def __init__(self, config: ProviderConfig) -> None:
        if config.api_version is None:
            raise ConfigError("api_version", None, "is required for type 'azure'")
        super().__init__(config)

    def _auth_headers(self) -> dict[str, str]:
        return {"api-key": self._secret} if self._secret else {}

    def url(self, operation: str) -> str:
        deployment = self.config.deployment or self.config.model
        query = urlencode({"api-version": self.config.api_version})
        return f"{self.config.base_url}/openai/deployments/{deployment}/{operation}?{query}"

    def _relay_url(self, operation: str) -> str:
        # An Azure client names the deployment and api-version in the path and query.
        return f"{self.config.base_url}/{operation}"
