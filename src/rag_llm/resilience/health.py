"""Active health checks of a provider's endpoints that spend no tokens.

A :class:`HealthChecker` runs one probe per endpoint on its own daemon thread, every
``interval`` seconds give or take ``jitter``, and keeps each endpoint's health with Envoy's
thresholds: a healthy endpoint turns unhealthy after ``unhealthy_threshold`` failed checks in
a row, an unhealthy one healthy after ``healthy_threshold`` passes in a row. A probe is a
callable returning True or False: :func:`connect_probe` opens a TCP (and TLS) connection; an
HTTP ``GET {base_url}/{path}`` probe (``/models`` lists models and costs nothing) is the
caller's to build.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from rag_llm.errors import ConfigError
from rag_llm.observability.events import get_logger
from rag_llm.resilience._common import Random, check_number

__all__ = [
    "DEFAULT_HEALTHY_THRESHOLD",
    "DEFAULT_INTERVAL",
    "DEFAULT_JITTER",
    "DEFAULT_TIMEOUT",
    "DEFAULT_UNHEALTHY_THRESHOLD",
    "EndpointHealth",
    "HealthCheckPolicy",
    "HealthChecker",
    "connect_probe",
    "next_wait",
]

# Envoy requires interval, timeout and both thresholds and has no defaults for them. The
# interval and unhealthy threshold are Kubernetes' probe defaults (periodSeconds 10,
# failureThreshold 3); two passes keep one lucky check from readmitting a flapping endpoint.
DEFAULT_INTERVAL: Final = 10.0
DEFAULT_JITTER: Final = 0.1
DEFAULT_TIMEOUT: Final = 2.0
DEFAULT_HEALTHY_THRESHOLD: Final = 2
DEFAULT_UNHEALTHY_THRESHOLD: Final = 3
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_SHARED_RNG: Final = random.Random()  # noqa: S311 - jitter, not cryptography
_log = get_logger("rag_llm.resilience")

Probe = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class HealthCheckPolicy:
    """What to check, how often, and how many results in a row change an endpoint's health.

    ``path`` is fetched under the endpoint's ``base_url`` (None: a TCP, and for https TLS,
    connect check only). Each wait is drawn from ``interval * (1 ± jitter)`` so that the
    checks of many processes do not line up. Endpoints start healthy: traffic flows before
    the first check, and meanwhile the circuit breaker guards the real calls.

    >>> HealthCheckPolicy(path="/models").path
    'models'
    """

    path: str | None = "models"
    interval: float = DEFAULT_INTERVAL
    jitter: float = DEFAULT_JITTER
    timeout: float = DEFAULT_TIMEOUT
    healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD
    unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD

    def __post_init__(self) -> None:
        if self.path is not None:
            if not isinstance(self.path, str) or self.path != self.path.strip() or (
                    not self.path.lstrip("/")):
                raise ConfigError("path", self.path, "must be None or a non-empty string "
                                  "without surrounding whitespace")
            object.__setattr__(self, "path", self.path.lstrip("/"))
        check_number("interval", self.interval, minimum=0, exclusive=True)
        check_number("jitter", self.jitter, minimum=0, maximum=1)
        check_number("timeout", self.timeout, minimum=0, exclusive=True)
        check_number("healthy_threshold", self.healthy_threshold, minimum=1, integer=True)
        check_number("unhealthy_threshold", self.unhealthy_threshold, minimum=1, integer=True)


def next_wait(policy: HealthCheckPolicy, rng: Random) -> float:
    """Seconds until the next check: uniform in ``interval * [1 - jitter, 1 + jitter)``."""
    return policy.interval * (1.0 - policy.jitter + 2.0 * policy.jitter * rng.random())


class EndpointHealth:
    """One endpoint's health and its current run of passes or failures; thread-safe."""

    def __init__(self, policy: HealthCheckPolicy | None = None) -> None:
        self.policy = policy or HealthCheckPolicy()
        self._lock = threading.Lock()
        self._healthy = True
        self._passes = 0
        self._failures = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def consecutive_passes(self) -> int:
        return self._passes

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def assume(self, healthy: bool) -> None:
        """Start from ``healthy`` with no run of results (taking over another's checks)."""
        with self._lock:
            self._healthy, self._passes, self._failures = healthy, 0, 0

    def record(self, ok: bool) -> bool | None:
        """Count one check; the new health if this result changed it, else None."""
        with self._lock:
            if ok:
                self._passes, self._failures = self._passes + 1, 0
                flips = not self._healthy and self._passes >= self.policy.healthy_threshold
            else:
                self._passes, self._failures = 0, self._failures + 1
                flips = self._healthy and self._failures >= self.policy.unhealthy_threshold
            if not flips:
                return None
            self._healthy = ok
            return ok


class HealthChecker:
    """Checks every endpoint on its own daemon thread, so a black-holed one delays no other.

    ``on_change(endpoint, healthy)`` is called from the checking thread when a result flips
    an endpoint's health; calls for one endpoint arrive in the order its health changed.
    ``on_stop()`` is called once, after :meth:`stop`, by the last checking thread to end:
    it releases what the probes use, even when nobody waited for the threads.
    ``gate(endpoint)``, asked before each check, may skip it (another process runs that
    endpoint's checks); ``on_checked(endpoint, healthy)`` follows every check that ran.
    """

    def __init__(
        self,
        probes: Mapping[str, Probe],
        policy: HealthCheckPolicy,
        *,
        name: str = "health",
        on_change: Callable[[str, bool], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        gate: Callable[[str], bool] | None = None,
        on_checked: Callable[[str, bool], None] | None = None,
        rng: Random | None = None,
    ) -> None:
        self.policy = policy
        self.name = name
        self._probes = dict(probes)
        self._health = {endpoint: EndpointHealth(policy) for endpoint in self._probes}
        # Held from record to notify, so one endpoint's listener calls cannot swap places.
        self._report_locks = {endpoint: threading.RLock() for endpoint in self._probes}
        self._on_change = on_change
        self._on_stop = on_stop
        self._gate = gate
        self._on_checked = on_checked
        self._probes_run = dict.fromkeys(self._probes, 0)
        self._rng = rng or _SHARED_RNG
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = 0  # threads started and not yet ended

    @property
    def running(self) -> bool:
        with self._lock:
            return bool(self._threads) and not self._stop.is_set()

    def start(self) -> None:
        """Start one thread per endpoint; a second call does nothing."""
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError(f"health checker {self.name!r} is stopped; make a new one")
            if self._threads:
                return
            for endpoint, probe in self._probes.items():
                thread = threading.Thread(
                    target=self._loop, args=(endpoint, probe), daemon=True,
                    name=f"rag_llm-health-{self.name}-{endpoint}")
                self._threads.append(thread)
                self._running += 1
                thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Wake and join every thread (each gets ``timeout`` seconds); no new probe starts.

        With ``timeout=0`` it only wakes them, and returns at once. Called from a checking
        thread (a probe or listener), it does not wait for that thread.
        """
        with self._lock:
            self._stop.set()
            threads = list(self._threads)
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(timeout)

    def healthy(self, endpoint: str) -> bool:
        return self._health[endpoint].healthy

    def snapshot(self) -> dict[str, bool]:
        return {endpoint: health.healthy for endpoint, health in self._health.items()}

    def probes_run(self) -> dict[str, int]:
        """How many probes each endpoint's checks have sent (gated ones not counted)."""
        return dict(self._probes_run)

    def assume(self, endpoint: str, healthy: bool) -> None:
        """Take ``healthy`` as ``endpoint``'s health, as another process's checks found it."""
        self._health[endpoint].assume(healthy)

    def check_now(self) -> dict[str, bool]:
        """Run one round of every probe in the caller's thread (startup, tests)."""
        for endpoint, probe in self._probes.items():
            self._check(endpoint, probe)
        return self.snapshot()

    def _loop(self, endpoint: str, probe: Probe) -> None:
        try:
            while not self._stop.is_set():
                self._check(endpoint, probe)
                if self._stop.wait(next_wait(self.policy, self._rng)):
                    return
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last and self._on_stop is not None:
                try:
                    self._on_stop()
                except Exception:
                    _log.exception("health_stop_failed", checker=self.name)

    def _check(self, endpoint: str, probe: Probe) -> None:
        if self._gate is not None and not self._gate_allows(endpoint):
            return
        self._probes_run[endpoint] += 1
        try:
            ok = bool(probe())
        except Exception as exc:
            # A probe's bug must read as a failed check, not end the endpoint's checks.
            _log.warning("health_probe_raised", checker=self.name, endpoint=endpoint,
                         error=repr(exc))
            ok = False
        with self._report_locks[endpoint]:
            health = self._health[endpoint]
            changed = health.record(ok)
            if changed is not None and self._on_change is not None:
                try:
                    self._on_change(endpoint, changed)
                except Exception:
                    _log.exception("health_listener_failed", checker=self.name,
                                   endpoint=endpoint, healthy=changed)
            if self._on_checked is not None:
                try:
                    self._on_checked(endpoint, health.healthy)
                except Exception:
                    _log.exception("health_listener_failed", checker=self.name,
                                   endpoint=endpoint)

    def _gate_allows(self, endpoint: str) -> bool:
        assert self._gate is not None
        try:
            return self._gate(endpoint)
        except Exception:
            _log.exception("health_gate_failed", checker=self.name, endpoint=endpoint)
            return True  # a broken gate must not leave the endpoint unchecked


def connect_probe(url: str, *, timeout: float,
                  ssl_context: ssl.SSLContext | None = None) -> Probe:
    """A probe that opens (for https, with a TLS handshake) and closes a connection to ``url``.

    It passes when the connection opens within ``timeout`` seconds and fails on any socket
    or TLS error; no request is sent.
    """
    check_number("timeout", timeout, minimum=0, exclusive=True)
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in _DEFAULT_PORTS or not host:
        raise ConfigError("url", url, "must be an http or https URL with a host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ConfigError("url", url, f"has an invalid port: {exc}") from None
    context = None
    if parts.scheme == "https":
        # Built once: loading the system CA store on every check would cost more than it does.
        context = ssl_context or ssl.create_default_context()

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if context is not None:
                    context.wrap_socket(sock, server_hostname=host).close()
        except OSError:  # ssl.SSLError and TimeoutError included
            return False
        return True

    return probe
