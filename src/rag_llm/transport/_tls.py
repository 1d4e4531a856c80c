"""TLS contexts, built once per process and shared by every client."""

from __future__ import annotations

import functools
import ssl

__all__ = ["ssl_context"]


@functools.cache
def ssl_context(verify: bool | str, http2: bool = False) -> ssl.SSLContext | bool:
    """The context for ``verify`` (``False``, ``True`` for system CAs, or a CA bundle path).

    Building one from a CA bundle costs ~40 ms of CPU, so clients per loop, per endpoint
    and per provider share it. Keyed by ``http2`` too, because httpcore sets ALPN
    protocols on the context it is given.
    """
    if verify is False:
        return False
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
