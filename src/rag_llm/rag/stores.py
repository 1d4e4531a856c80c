"""Document stores by name or URL: ``[rag] store`` (``RAG_LLM_STORE``) picks one.

A name picks an entry of :data:`STORES`; a URL picks the entry of :data:`SCHEMES` for its
scheme (``postgresql://user@host:5432/db`` opens :class:`~rag_llm.rag.pg_store.PostgresStore`).
Each entry is the ``"module:factory"`` that opens the store; the module is imported only when
its store is chosen, so a server-grade store's driver stays off the import path of those who
do not use it. A factory takes the :class:`~rag_llm.rag.settings.RagSettings` and returns a
:class:`~rag_llm.rag.store.DocumentStore`; plugging one in is one more entry here, with no
change to the service.

A URL's password never stays in the URL: :func:`split_password` moves it out, into the
``store_password`` setting (a :class:`~rag_llm.config.Secret`), so that reprs, logs, errors
and ``rag-llm config check`` show the URL without it.

>>> sorted(STORES), sorted(SCHEMES)
(['sqlite'], ['postgres', 'postgresql'])
>>> split_password("postgresql://rag:s3cret@db.internal:5432/rag")
('postgresql://rag@db.internal:5432/rag', 's3cret')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from rag_llm.errors import ConfigError
from rag_llm.validation import closest

if TYPE_CHECKING:
    from rag_llm.rag.settings import RagSettings
    from rag_llm.rag.store import DocumentStore

__all__ = ["DEFAULT_STORE", "SCHEMES", "STORES", "check_store", "open_store", "split_password",
           "store_scheme"]

DEFAULT_STORE: Final = "sqlite"
# name -> "module:factory" (the factory may be a dotted attribute path, as in entry points).
STORES: dict[str, str] = {
    DEFAULT_STORE: "rag_llm.rag.sqlite_store:SQLiteStore.from_settings",
}
_POSTGRES: Final = "rag_llm.rag.pg_store:PostgresStore.from_settings"
# URL scheme -> "module:factory", for stores that live on a server.
SCHEMES: dict[str, str] = {"postgresql": _POSTGRES, "postgres": _POSTGRES}
# What to install when a store's module cannot be imported.
_EXTRAS: Final = {_POSTGRES: "pip install 'rag-llm[postgres]'"}


def store_scheme(value: str) -> str | None:
    """The lower-cased scheme of ``value`` if it is a URL (``scheme://...``), else None."""
    scheme, sep, _ = value.partition("://")
    return scheme.lower() if sep and scheme.isidentifier() else None


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password (in the user part or a ``password=`` parameter), and
    the password, or None if it had none."""
    parts = urlsplit(url)
    password: str | None = None
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user, _, secret = userinfo.partition(":")
        password = unquote(secret)
        netloc = f"{user}@{hostport}" if user else hostport
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in query if key != "password"]
    if len(kept) != len(query):
        password = next(value for key, value in query if key == "password")
    if password is None:
        return url, None
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(kept, quote_via=quote))), \
        password


def check_store(name: object) -> str:
    """``name`` if it is a registered store or a URL of a known scheme, else a ConfigError
    naming the closest one (a URL is shown without its password)."""
    if isinstance(name, str) and (scheme := store_scheme(name)) is not None:
        if scheme in SCHEMES:
            return name
        raise ConfigError("store", split_password(name)[0],
                          f"has an unknown scheme {scheme!r}; known: "
                          f"{', '.join(f'{s}://' for s in sorted(SCHEMES))}")
    if isinstance(name, str) and name in STORES:
        return name
    known = sorted(STORES)
    guess = closest(name, known) if isinstance(name, str) else None
    if isinstance(name, str) and guess is None:  # case slips: "SQLite"
        guess = next((k for k in known if k.lower() == name.lower()), None)
    hint = f"did you mean {guess!r}? " if guess else ""
    raise ConfigError("store", name, f"is not a known store; {hint}known: {', '.join(known)}, "
                                     "or a URL such as postgresql://user@host:5432/db")


def open_store(settings: RagSettings) -> DocumentStore:
    """Open the store ``settings.store`` names, importing its module now."""
    name = check_store(settings.store)
    scheme = store_scheme(name)
    target = SCHEMES[scheme] if scheme is not None else STORES[name]
    shown = split_password(name)[0]
    module_name, _, path = target.partition(":")
    try:
        factory: object = importlib.import_module(module_name)
        for attribute in path.split("."):
            factory = getattr(factory, attribute)
    except (ImportError, AttributeError) as exc:
        hint = f"; {_EXTRAS[target]}" if target in _EXTRAS else ""
        raise ConfigError("store", shown, f"cannot be loaded from {target!r}: "
                                          f"{exc}{hint}") from None
    if not callable(factory):
        raise ConfigError("store", shown, f"{target!r} is not callable")
    store: DocumentStore = factory(settings)
    return store
