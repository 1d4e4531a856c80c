"""Document stores by name: ``[rag] store`` (``RAG_LLM_STORE``) picks one of :data:`STORES`.

Each entry maps a name to the ``"module:factory"`` that opens it; the module is imported only
when its store is chosen, so a server-grade store's driver stays off the import path of those
who do not use it. A factory takes the :class:`~rag_llm.rag.settings.RagSettings` and returns
a :class:`~rag_llm.rag.store.DocumentStore`; plugging one in is one more entry here, with no
change to the service.

>>> sorted(STORES)
['sqlite']
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Final

from rag_llm.errors import ConfigError

if TYPE_CHECKING:
    from rag_llm.rag.settings import RagSettings
    from rag_llm.rag.store import DocumentStore

__all__ = ["DEFAULT_STORE", "STORES", "check_store", "open_store"]

DEFAULT_STORE: Final = "sqlite"
# name -> "module:factory" (the factory may be a dotted attribute path, as in entry points).
STORES: dict[str, str] = {
    DEFAULT_STORE: "rag_llm.rag.sqlite_store:SQLiteStore.from_settings",
}


def check_store(name: object) -> str:
    """``name`` if it is a registered store, else a ConfigError naming the closest one."""
    if isinstance(name, str) and name in STORES:
        return name
    known = sorted(STORES)
    close = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
    if isinstance(name, str) and not close:  # case slips: "SQLite"
        close = [k for k in known if k.lower() == name.lower()][:1]
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError("store", name, f"is not a known store; {hint}known: {', '.join(known)}")


def open_store(settings: RagSettings) -> DocumentStore:
    """Open the store ``settings.store`` names, importing its module now."""
    name = check_store(settings.store)
    module_name, _, path = STORES[name].partition(":")
    try:
        factory: object = importlib.import_module(module_name)
        for attribute in path.split("."):
            factory = getattr(factory, attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("store", name, f"cannot be loaded from {STORES[name]!r}: "
                                         f"{exc}") from None
    if not callable(factory):
        raise ConfigError("store", name, f"{STORES[name]!r} is not callable")
    store: DocumentStore = factory(settings)
    return store
