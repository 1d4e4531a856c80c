"""The exception tree: every error rag-llm raises derives from ``RagLLMError``.

::

    RagLLMError
    +-- ConfigError                 a setting is missing or invalid (names field and value)
    +-- ProviderClosedError         a provider was used after close, or while it shuts down
    |   +-- LocatorClosedError      a provider was asked of a locator after its cleanup
    +-- CircuitOpenError            every endpoint is open or cooling down: nothing was sent
    +-- LocalRateLimitError         the client-side rate limit allows no call before the deadline
    +-- RequestExceedsBurstError    a call costs more than its rate limit's burst: never admitted
    +-- StateUnavailableError       the shared state (Redis) failed and on_state_error is fail
    +-- StoreError                  the document store could not write: out of space, locked
    +-- TransportError              no usable HTTP response arrived
    |   +-- ConnectError            the TCP or TLS connection could not be opened
    |   +-- ConnectionLostError     the connection dropped before a full response
    |       +-- StreamInterruptedError  a stream broke after text reached the caller
    |   +-- RequestTimeoutError
    |       +-- PoolTimeoutError    no pooled connection became free in time
    |       +-- ConnectTimeoutError
    |       +-- ReadTimeoutError    includes the first-token and stream-idle timeouts
    |       +-- WriteTimeoutError
    |       +-- DeadlineExceededError  the call's deadline passed, retries included
    +-- UpstreamError               the upstream answered with an error status
    |   +-- AuthenticationError     401 / 403
    |   +-- RateLimitError          429 (carries ``retry_after``)
    |   +-- ServerError             5xx
    +-- MalformedResponseError      a 2xx body that does not match the API

Lower-layer exceptions (httpx, httpcore) are translated once, at the transport boundary,
with ``raise ... from``. Messages carry provider, endpoint and status, never a secret:
endpoints are reduced to scheme, host, port and path.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "DeadlineExceededError",
    "LocalRateLimitError",
    "LocatorClosedError",
    "MalformedResponseError",
    "PoolTimeoutError",
    "ProviderClosedError",
    "RagLLMError",
    "RateLimitError",
    "ReadTimeoutError",
    "RequestExceedsBurstError",
    "RequestTimeoutError",
    "ServerError",
    "StateUnavailableError",
    "StoreError",
    "StreamInterruptedError",
    "TransportError",
    "UpstreamError",
    "WriteTimeoutError",
]


class RagLLMError(Exception):
    """Root of every exception raised by rag-llm."""


class ConfigError(RagLLMError, ValueError):
    """A setting is missing or invalid; ``field`` and ``value`` say which."""

    # A ``value`` that the message leaves out: an unknown key's value may be a secret.
    UNSHOWN: object = object()

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = field if value is ConfigError.UNSHOWN else f"{field}={value!r}"
        super().__init__(f"{shown}: {reason}")

    def within(self, prefix: str) -> ConfigError:
        """The same error with ``field`` under ``prefix`` (``providers.embedding.``, say)."""
        return ConfigError(prefix + self.field, self.value, self.reason)


class ProviderClosedError(RagLLMError, RuntimeError):
    """A provider (or its pool) was used after ``close()``/``aclose()``."""


class LocatorClosedError(ProviderClosedError):
    """A provider was asked of (or handed to) a service locator once its cleanup had begun.

    ``provider_type`` names the kind; ``state`` is ``"closing"`` or ``"closed"``.
    """

    def __init__(self, provider_type: str, state: str) -> None:
        self.provider_type = provider_type
        self.state = state
        when = "is shutting down (cleanup() is running)" if state == "closing" else \
            "was cleaned up"
        super().__init__(f"no {provider_type!r} provider: the service locator {when}; "
                         "create a new ServiceLocator (get_service_locator() makes a fresh "
                         "process-wide one)")


class CircuitOpenError(RagLLMError):
    """No endpoint may take a call now; ``retry_in`` maps each endpoint to seconds until it may.

    Raised before anything is sent, so it never counts against an endpoint's health.
    """

    def __init__(self, provider: str, retry_in: dict[str, float]) -> None:
        self.provider = provider
        self.retry_in = retry_in
        waits = ", ".join(f"{name} in {seconds:.1f} s" for name, seconds in retry_in.items())
        super().__init__(f"{provider}: circuit open on every endpoint; tried again: {waits}")


class LocalRateLimitError(RagLLMError):
    """The configured client-side rate limit allows no call before the deadline."""

    def __init__(self, provider: str, endpoint: str, wait: float) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.wait = wait
        super().__init__(f"{provider}: client-side rate limit of {endpoint} allows the next "
                         f"call in {wait:.1f} s, past the call's deadline")


class RequestExceedsBurstError(RagLLMError):
    """A call costs more than its rate limit can ever admit at once (its ``burst``).

    Raised at once, before anything is sent: waiting would never help. ``limit`` names the
    setting (``tokens_per_minute`` or ``requests_per_minute``), ``cost`` what the call asked.
    """

    def __init__(self, provider: str, endpoint: str, cost: float, limit: str = "",
                 burst: float | None = None) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.cost = cost
        self.limit = limit
        self.burst = burst
        what = f" {limit}" if limit else ""
        size = f" of {burst:g}" if burst is not None else ""
        super().__init__(f"{provider}: a call costing {cost:g} exceeds the{what} burst{size} "
                         f"of {endpoint}; it can never be admitted: split it, or raise "
                         "burst/token_burst")


class StateUnavailableError(RagLLMError):
    """The shared state backend (Redis) could not be used and ``on_state_error`` is ``fail``.

    ``url`` is the backend's address without its password.
    """

    def __init__(self, url: str, detail: str, *, provider: str = "") -> None:
        self.url = url
        self.provider = provider
        self.detail = detail
        who = f"{provider}: " if provider else ""
        super().__init__(f"{who}shared state backend {url} unavailable: {detail}")


class StoreError(RagLLMError):
    """The document store could not write its data; ``location`` says where it lives.

    ``full`` is True when the disk (or a file size limit) ran out of space. The write it
    interrupted was rolled back: what was stored before is intact.
    """

    def __init__(self, location: str, message: str, *, full: bool = False) -> None:
        self.location = location
        self.full = full
        super().__init__(message)


class TransportError(RagLLMError):
    """No usable HTTP response arrived from ``endpoint``."""

    def __init__(self, message: str, *, provider: str, endpoint: str) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.detail = message
        super().__init__(f"{provider}: {message} ({endpoint})")


class ConnectError(TransportError):
    """The TCP or TLS connection to the upstream could not be opened."""


class ConnectionLostError(TransportError):
    """The connection was closed or reset before a complete response arrived."""


class StreamInterruptedError(ConnectionLostError):
    """A stream broke after text reached the caller; ``received`` is all it got.

    Never retried: the caller has already used part of the answer.
    """

    def __init__(self, message: str, *, provider: str, endpoint: str, received: str) -> None:
        self.received = received
        super().__init__(message, provider=provider, endpoint=endpoint)


class RequestTimeoutError(TransportError, TimeoutError):
    """A configured timeout expired."""


class PoolTimeoutError(RequestTimeoutError):
    """Every pooled connection stayed busy for longer than ``pool_timeout``."""


class ConnectTimeoutError(RequestTimeoutError):
    """Opening a connection took longer than ``connect_timeout``."""


class ReadTimeoutError(RequestTimeoutError):
    """The upstream sent nothing for longer than ``read_timeout``."""


class WriteTimeoutError(RequestTimeoutError):
    """Sending the request took longer than ``write_timeout``."""


class DeadlineExceededError(RequestTimeoutError):
    """The call's ``deadline`` passed, retries and their waits included."""


class UpstreamError(RagLLMError):
    """The upstream answered with an error status; ``retry_after`` is in seconds when it
    said (``Retry-After`` or ``retry-after-ms``, as on a 429 or 503)."""

    def __init__(self, *, provider: str, endpoint: str, status: int, message: str,
                 retry_after: float | None = None) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.status = status
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{provider}: HTTP {status} from {endpoint}: {message}")


class AuthenticationError(UpstreamError):
    """The upstream rejected the credentials (401 or 403)."""


class RateLimitError(UpstreamError):
    """The upstream is rate limiting (429)."""


class ServerError(UpstreamError):
    """The upstream failed (5xx)."""


class MalformedResponseError(RagLLMError):
    """A successful response whose body does not match the API's shape."""

    def __init__(self, *, provider: str, endpoint: str, detail: str) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.detail = detail
        super().__init__(f"{provider}: malformed response from {endpoint}: {detail}")
