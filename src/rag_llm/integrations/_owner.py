"""What every integration class shares: it calls a provider it borrowed (``provider=``) or
built (``config=``), and releases only one it built."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rag_llm.providers import ChatProvider, Embedder

__all__ = ["ProviderOwner"]


class ProviderOwner:
    """``close()``/``aclose()`` and ``with`` blocks, which release the provider only when
    the object built it from ``config=``; a provider passed in stays open for its owner."""

    def _held(self) -> tuple[Embedder | ChatProvider, bool]:
        """The provider, and whether this object built it."""
        raise NotImplementedError

    @property
    def owns_provider(self) -> bool:
        """True when built from ``config=``: then ``close()``/``aclose()`` close the provider."""
        return self._held()[1]

    def close(self) -> None:
        """Close the provider if this object built it (``config=``); else do nothing."""
        provider, owned = self._held()
        if owned:
            provider.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`: the owned provider's calls in flight finish first."""
        provider, owned = self._held()
        if owned:
            await provider.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
