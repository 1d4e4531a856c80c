"""Wire formats: how a provider's calls become HTTP requests and responses become values.

An :class:`APIAdapter` knows one API family's URLs, headers, bodies and error bodies, and
nothing of pools, retries or event loops; the call layer (:mod:`rag_llm.calls`) knows the
reverse. The OpenAI-compatible family (OpenAI, Azure OpenAI, vLLM, Ollama, TEI and any
server of that shape) is the first adapter, in :mod:`rag_llm.adapters.openai`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from rag_llm.config import ProviderConfig
    from rag_llm.errors import MalformedResponseError, UpstreamError
    from rag_llm.transport import Request, Response

__all__ = ["APIAdapter", "AdapterFactory", "Message", "StreamParser"]

Message = Mapping[str, Any]
T_co = TypeVar("T_co", covariant=True)


class StreamParser(Protocol[T_co]):
    """Turns the lines of one streamed answer into items: text deltas, or whole chunks.

    ``done`` once the answer has ended; ``received`` is the text delivered so far, which an
    interrupted stream's error carries.
    """

    done: bool
    received: list[str]

    def feed(self, line: str) -> T_co | None:
        """The item ``line`` carries, or None; raises the adapter's errors on a bad line."""
        ...


class APIAdapter(Protocol):
    """One endpoint's wire format: builds every request and parses every response.

    ``provider`` and ``endpoint`` (scheme, host, port and path only) name it in errors.
    """

    provider: str
    endpoint: str

    def embeddings_request(self, texts: Sequence[str]) -> Request: ...

    def parse_embeddings(self, request: Request, response: Response,
                         count: int) -> list[list[float]]: ...

    def chat_request(self, messages: Sequence[Message], params: Mapping[str, Any],
                     *, stream: bool = False) -> Request: ...

    def parse_chat(self, request: Request, response: Response) -> str: ...

    def parse_completion(self, request: Request, response: Response) -> dict[str, Any]:
        """The whole chat completion object, checked to have a message in ``choices``."""
        ...

    def stream_parser(self, request: Request) -> StreamParser[str]: ...

    def chunk_parser(self, request: Request) -> StreamParser[dict[str, Any]]:
        """A parser that yields each chunk object of a streamed completion whole."""
        ...

    def error(self, request: Request, status: int, headers: Mapping[str, str],
              content: bytes) -> UpstreamError:
        """The error an error response (status >= 400) stands for."""
        ...

    def malformed(self, request: Request, detail: str) -> MalformedResponseError: ...

    def get_request(self, operation: str) -> Request:
        """A cheap GET of ``operation``, as health probes and warm-up send it."""
        ...

    def relay_request(self, method: str, operation: str, query: str,
                      headers: Mapping[str, str], content: bytes | None) -> Request:
        """``operation`` (``chat/completions``, ``models``, ...) as another client built it,
        with this endpoint's URL and credentials instead of that client's."""
        ...


class AdapterFactory(Protocol):
    """What builds an adapter for one endpoint's config: the adapter class, usually."""

    def __call__(self, config: ProviderConfig) -> APIAdapter: ...
