"""Where a library's exception becomes rag-llm's: one context manager for every transport.

Each transport has an :class:`ErrorTranslator` that knows its library's exceptions
(``catches``) and maps one to the matching :class:`~rag_llm.errors.TransportError`, naming
the provider, the endpoint and the limit to change. ``with translator.around(request):``
around any call into the library raises that error, ``from`` the library's own.
"""

from __future__ import annotations

from types import TracebackType

from rag_llm import errors
from rag_llm.transport import Request

__all__ = ["ErrorTranslator", "Translating"]


class ErrorTranslator:
    """Maps the exceptions in ``catches`` to rag-llm's; subclasses say how."""

    catches: tuple[type[BaseException], ...] = ()

    def __call__(self, exc: BaseException, request: Request) -> errors.RagLLMError:
        raise NotImplementedError

    def around(self, request: Request) -> Translating:
        """A context in which a library error about ``request`` is raised as rag-llm's."""
        return Translating(self, request)


class Translating:
    """The context :meth:`ErrorTranslator.around` returns (a class: it is on every call)."""

    __slots__ = ("_request", "_translator")

    def __init__(self, translator: ErrorTranslator, request: Request) -> None:
        self._translator = translator
        self._request = request

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, self._translator.catches):
            raise self._translator(exc, self._request) from exc
