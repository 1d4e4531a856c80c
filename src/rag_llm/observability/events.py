"""Structured lifecycle events through structlog, with secrets redacted.

Event names (``connection_pool_created``, ``connection_pool_closed``, ``provider_closed``,
``service_locator_cleanup_success`` and a ``*_failed`` twin for each) are part of the
public contract: dashboards and alerts match on them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final

__all__ = ["REDACTED", "configure_logging", "get_logger", "load_logging", "redact_secrets",
           "scrub_text"]

REDACTED: Final = "**********"
# Keys whose values are credentials whatever they hold.
_SECRET_KEYS: Final = re.compile(
    r"(api[_-]?key|authorization|secret|password|(^|[_-])token$)", re.I
)
# Credential shapes that may hide inside free text such as an upstream's error message.
_SECRET_TEXT: Final = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._~+/=\-]+|api-key:\s*\S+)", re.I
)


class _LazyLogger:
    """structlog's logger, imported at the first event rather than at ``import rag_llm``.

    Importing structlog costs ~150 ms where rich is installed (structlog loads it for
    tracebacks), and rag-llm logs only lifecycle events, never per request.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(self._name), method)


def load_logging() -> None:
    """Import structlog now: a provider does so when it is built, so that its first event
    (a pool created, Redis gone) does not stall the caller's event loop for the import."""
    import structlog  # noqa: F401


def get_logger(name: str = "rag_llm") -> Any:
    """The logger rag-llm emits its events on (structlog's, resolved at each event)."""
    return _LazyLogger(name)


def scrub_text(text: str) -> str:
    """``text`` with credential-shaped substrings (``sk-...``, ``Bearer ...``) blanked."""
    return _SECRET_TEXT.sub(REDACTED, text)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEYS.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank credential-named keys and credential-shaped text."""
    for key, value in event_dict.items():
        if _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        elif key == "exc_info":
            continue
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Console-friendly output for development, one JSON object per line for production."""
    import structlog

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            _scrub_rendered_exception,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Loggers bound at import must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )


def _scrub_rendered_exception(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if "exception" in event_dict:
        event_dict["exception"] = _scrub(event_dict["exception"])
    return event_dict
