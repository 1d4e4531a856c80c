"""Checks every settings object shares: numbers in range, non-empty text, known keys.

A leaf module (it imports only :mod:`rag_llm.errors`), so that the config and the
resilience policies validate the same way without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from urllib.parse import urlsplit

from rag_llm.errors import ConfigError

__all__ = ["bad_port_reason", "check_number", "check_text", "check_url", "closest",
           "redact_bad_url", "redact_url", "refuse_unknown"]


def check_number(
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float | None = None,
    integer: bool = False,
    exclusive: bool = False,
) -> float:
    """``value`` if it is a finite number in range, else ``ConfigError`` naming ``name``.

    An ``int`` comes back as the same ``int``.
    """
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(name, value, f"must be {'an integer' if integer else 'a number'}")
    number: float = value  # type: ignore[assignment]
    if not math.isfinite(number):
        raise ConfigError(name, value, "must be finite")
    if number < minimum or (exclusive and number == minimum):
        raise ConfigError(name, value, f"must be {'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None and number > maximum:
        raise ConfigError(name, value, f"must be <= {maximum:g}")
    return number


def check_text(name: str, value: object) -> str:
    """``value`` if it is a string with something besides blanks, else ``ConfigError``."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, value, "must be a non-empty string")
    return value


def check_url(name: str, value: object) -> str:
    """``value`` without a trailing slash if it is an http(s) URL with a host and nothing
    secret in it (no credentials, query or fragment), else ``ConfigError``."""
    url = check_text(name, value)
    parts = urlsplit(url)
    shown = redact_bad_url(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(name, shown, bad_port_reason(url)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, shown, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(name, shown, "must not carry credentials; use api_key")
    if parts.query or parts.fragment:
        # A query may hold a key, and the operation path is appended after base_url.
        raise ConfigError(name, shown, "must not have a query or fragment")
    return url.rstrip("/")


def redact_url(url: str) -> str:
    """Scheme, host, port and path: the part of a URL that errors, events and metrics show.

    >>> redact_url("https://user:pw@api.example.com/v1?key=sk-1")
    'https://api.example.com/v1'
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme or netloc else parts.path


def redact_bad_url(url: str) -> str:
    """``url`` as an error about it shows it: also without whatever precedes its last ``@``.

    An unencoded ``/``, ``?`` or ``#`` in a password ends the host part early, so
    :func:`redact_url` would show the password's head as the host, or its tail as the path.

    >>> redact_bad_url("redis://:pa/ss@cache:6379/0")
    'redis://cache:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    return redact_url(f"{scheme}://{rest.rpartition('@')[2]}" if sep else url)


def bad_port_reason(url: str) -> str:
    """Why a URL's port does not parse, with the likely cause when a password broke it."""
    if "@" in url.partition("://")[2] and "@" not in urlsplit(url).netloc:
        return "has an invalid port (percent-encode / ? # in a password)"
    return "has an invalid port"


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` is most likely a misspelling of, if any is close."""
    import difflib  # only an error needs it: off the import path

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def refuse_unknown(given: Iterable[str], known: Iterable[str], *, table: str = "") -> None:
    """``ConfigError`` for the first key of ``given`` not in ``known``, with a suggestion.

    ``table`` (``providers.embedding``, say) prefixes the key in the error's ``field``.
    The value is left out of the message: a misspelt ``api_key`` would otherwise show.
    """
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    key = unknown[0]
    guess = closest(key, known)
    hint = f"did you mean `{guess}`?" if guess else f"known: {', '.join(known)}"
    where = f" of [{table}]" if table else ""
    raise ConfigError(f"{table}.{key}" if table else key, ConfigError.UNSHOWN,
                      f"is not a known setting{where}; {hint}")
