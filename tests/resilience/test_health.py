"""Active health checks: policy checks, Envoy's thresholds, the checker's threads, probes."""

from __future__ import annotations

import gc
import itertools
import math
import socket
import ssl
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilkit import HYPOTHESIS, FixedRandom
from support import closed_port, open_fds, provider_config

from rag_llm.errors import ConfigError
from rag_llm.providers import create_provider
from rag_llm.resilience.health import (
    EndpointHealth,
    HealthChecker,
    HealthCheckPolicy,
    connect_probe,
    next_wait,
)
from rag_llm.testing import UpstreamServer

FAST = HealthCheckPolicy(interval=0.05, jitter=0.0, healthy_threshold=2, unhealthy_threshold=2)
_names = itertools.count()


def unique(prefix: str) -> str:
    """A checker name no other test uses, so thread-name assertions see only our threads."""
    return f"{prefix}{next(_names)}"


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"rag_llm-health-{name}-")]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def scripted(*results: bool | Exception) -> Callable[[], bool]:
    """A probe returning (or raising) ``results`` in turn."""
    it: Iterator[bool | Exception] = iter(results)

    def probe() -> bool:
        result = next(it)
        if isinstance(result, Exception):
            raise result
        return result

    return probe


class Switch:
    """A probe whose answer the test flips; it counts and timestamps its calls."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls: list[float] = []

    def __call__(self) -> bool:
        self.calls.append(time.monotonic())
        return self.ok


# -- policy -------------------------------------------------------------------------------


def test_policy_defaults_and_path_normalisation() -> None:
    policy = HealthCheckPolicy()
    assert (policy.path, policy.interval, policy.jitter, policy.timeout) == (
        "models", 10.0, 0.1, 2.0)
    assert (policy.healthy_threshold, policy.unhealthy_threshold) == (2, 3)
    assert HealthCheckPolicy(path="/models").path == "models"
    assert HealthCheckPolicy(path=None).path is None


@pytest.mark.parametrize(("field", "value"), [
    ("path", " models"),
    ("path", "models\n"),
    ("path", ""),
    ("path", "/"),
    ("path", 7),
    ("interval", 0),
    ("interval", -1.0),
    ("interval", math.inf),
    ("interval", "10"),
    ("jitter", -0.01),
    ("jitter", 1.01),
    ("jitter", math.nan),
    ("timeout", 0),
    ("timeout", -2.0),
    ("healthy_threshold", 0),
    ("healthy_threshold", 1.5),
    ("healthy_threshold", True),
    ("unhealthy_threshold", 0),
    ("unhealthy_threshold", 2.0),
])
def test_policy_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        HealthCheckPolicy(**{field: value})
    assert caught.value.field == field


# -- EndpointHealth -----------------------------------------------------------------------


def test_endpoint_health_follows_envoy_thresholds() -> None:
    health = EndpointHealth(HealthCheckPolicy(healthy_threshold=2, unhealthy_threshold=3))
    assert health.healthy
    assert [health.record(ok) for ok in (False, False, True)] == [None, None, None]
    assert health.healthy  # a pass broke the run of failures
    assert [health.record(ok) for ok in (False, False, False)] == [None, None, False]
    assert not health.healthy
    assert health.consecutive_failures == 3
    assert [health.record(ok) for ok in (False, True, False)] == [None] * 3
    assert not health.healthy
    assert [health.record(ok) for ok in (True, True)] == [None, True]
    assert health.healthy
    assert health.consecutive_passes == 2
    assert health.consecutive_failures == 0


def test_thresholds_of_one_flip_on_every_opposite_result() -> None:
    health = EndpointHealth(HealthCheckPolicy(healthy_threshold=1, unhealthy_threshold=1))
    assert [health.record(ok) for ok in (True, False, False, True, True)] == [
        None, False, None, True, None]


def expected_flips(results: list[bool], healthy_threshold: int,
                   unhealthy_threshold: int) -> list[bool | None]:
    """The oracle, by runs: a run of results opposite to the health flips it at its N-th."""
    flips: list[bool | None] = [None] * len(results)
    healthy, start = True, 0
    for value, run in itertools.groupby(results):
        length = len(list(run))
        threshold = healthy_threshold if value else unhealthy_threshold
        if value != healthy and length >= threshold:
            flips[start + threshold - 1] = value
            healthy = value
        start += length
    return flips


@HYPOTHESIS
@given(results=st.lists(st.booleans(), max_size=60),
       healthy_threshold=st.integers(1, 5), unhealthy_threshold=st.integers(1, 5))
def test_health_flips_exactly_after_threshold_opposite_results(
        results: list[bool], healthy_threshold: int, unhealthy_threshold: int) -> None:
    health = EndpointHealth(HealthCheckPolicy(healthy_threshold=healthy_threshold,
                                              unhealthy_threshold=unhealthy_threshold))
    got = []
    for ok in results:
        before = health.healthy
        changed = health.record(ok)
        got.append(changed)
        assert (changed is not None) == (health.healthy != before)
        assert (health.consecutive_passes > 0) == ok
        assert (health.consecutive_failures > 0) == (not ok)
    assert got == expected_flips(results, healthy_threshold, unhealthy_threshold)


# -- HealthChecker, synchronously ---------------------------------------------------------


def test_check_now_rounds_drive_transitions_and_listener_calls() -> None:
    changes: list[tuple[str, bool]] = []
    checker = HealthChecker(
        {"a": scripted(False, False, True, True), "b": scripted(True, False, True, False)},
        FAST, name=unique("sync"), on_change=lambda e, h: changes.append((e, h)))
    assert checker.snapshot() == {"a": True, "b": True}
    assert checker.check_now() == {"a": True, "b": True}
    assert checker.check_now() == {"a": False, "b": True}
    assert changes == [("a", False)]
    assert checker.check_now() == {"a": False, "b": True}
    assert checker.check_now() == {"a": True, "b": True}
    assert changes == [("a", False), ("a", True)]
    assert checker.snapshot() == {"a": True, "b": True}
    assert not checker.running


def test_a_probe_that_raises_counts_as_a_failure() -> None:
    checker = HealthChecker({"a": scripted(RuntimeError("boom"), OSError("down"), True)},
                            FAST, name=unique("raises"))
    checker.check_now()
    assert checker.check_now() == {"a": False}
    assert checker.check_now() == {"a": False}  # one pass is below healthy_threshold


def test_a_failing_listener_is_swallowed_and_health_still_changes() -> None:
    def listener(endpoint: str, healthy: bool) -> None:
        raise ValueError("listener bug")

    checker = HealthChecker({"a": scripted(False, False)}, FAST, name=unique("listener"),
                            on_change=listener)
    checker.check_now()
    assert checker.check_now() == {"a": False}


# -- HealthChecker, on its threads --------------------------------------------------------


def test_background_checks_flip_an_endpoint_and_bring_it_back() -> None:
    probe = Switch(ok=True)
    changes: list[bool] = []
    checker = HealthChecker({"a": probe}, FAST, name=unique("flip"),
                            on_change=lambda _, healthy: changes.append(healthy))
    checker.start()
    checker.start()  # idempotent: still one thread
    try:
        assert checker.running
        assert len(threads_named(checker.name)) == 1
        wait_until(lambda: len(probe.calls) >= 3)
        assert checker.healthy("a")
        assert changes == []
        probe.ok = False
        wait_until(lambda: not checker.healthy("a"), timeout=2.0)
        probe.ok = True
        wait_until(lambda: checker.healthy("a"), timeout=2.0)
        assert changes == [False, True]
    finally:
        checker.stop()


def test_a_raising_probe_does_not_end_its_thread() -> None:
    calls: list[int] = []

    def probe() -> bool:
        calls.append(1)
        raise RuntimeError("probe bug")

    checker = HealthChecker({"a": probe}, FAST, name=unique("bug"))
    checker.start()
    try:
        wait_until(lambda: len(calls) >= 3)
        assert not checker.healthy("a")
        assert len(threads_named(checker.name)) == 1
    finally:
        checker.stop()


def test_a_slow_endpoint_does_not_delay_another() -> None:
    release = threading.Event()
    slow_calls: list[int] = []

    def slow() -> bool:
        slow_calls.append(1)
        release.wait(10.0)  # a black-holed endpoint: the check hangs
        return True

    fast = Switch(ok=True)
    checker = HealthChecker({"slow": slow, "fast": fast}, FAST, name=unique("slow"))
    checker.start()
    try:
        wait_until(lambda: bool(slow_calls))
        started = len(fast.calls)
        time.sleep(0.5)
        # About ten checks at a 50 ms interval; five leaves room for a slow machine.
        assert len(fast.calls) - started >= 5
        assert slow_calls == [1]
    finally:
        release.set()
        checker.stop()


def test_stop_joins_every_thread_and_no_probe_runs_after() -> None:
    probes = {"a": Switch(), "b": Switch(), "c": Switch()}
    checker = HealthChecker(probes, FAST, name=unique("stop"))
    checker.start()
    wait_until(lambda: all(len(p.calls) >= 2 for p in probes.values()))
    assert len(threads_named(checker.name)) == 3
    started = time.monotonic()
    checker.stop()
    assert time.monotonic() - started < 1.0  # the event wakes the waits at once
    assert threads_named(checker.name) == []
    assert not checker.running
    counts = [len(p.calls) for p in probes.values()]
    time.sleep(0.2)
    assert [len(p.calls) for p in probes.values()] == counts
    checker.stop()  # idempotent
    with pytest.raises(RuntimeError):
        checker.start()


# -- jitter -------------------------------------------------------------------------------


def test_next_wait_spans_the_jitter_band() -> None:
    policy = HealthCheckPolicy(interval=10.0, jitter=0.2)
    assert next_wait(policy, FixedRandom(0.0)) == pytest.approx(8.0)
    longest = next_wait(policy, FixedRandom(0.999))
    assert 11.99 < longest < 12.0
    assert next_wait(HealthCheckPolicy(interval=10.0, jitter=0.0), FixedRandom(0.7)) == 10.0


class CountingRandom(FixedRandom):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


def test_the_checker_waits_the_jittered_interval_it_draws() -> None:
    rng = CountingRandom(0.999)
    probe = Switch()
    policy = HealthCheckPolicy(interval=0.04, jitter=0.5)  # draws of 0.999 wait ~60 ms
    checker = HealthChecker({"a": probe}, policy, name=unique("jitter"), rng=rng)
    checker.start()
    try:
        wait_until(lambda: len(probe.calls) >= 4)
    finally:
        checker.stop()
    assert rng.draws >= 3
    gaps = [b - a for a, b in itertools.pairwise(probe.calls)]
    assert min(gaps) >= 0.055  # not the bare 40 ms interval


# -- connect_probe ------------------------------------------------------------------------


def settle(server: UpstreamServer, connections: int) -> None:
    """Wait until the server has seen our connections open and close.

    UpstreamServer.stop() loses a connection it accepts while stopping (it waits out its
    timeout and leaks the transport), so the probes' connections must be over by then.
    """
    assert server.wait_until(
        lambda s: s.connections_accepted >= connections and s.connections_open == 0)


def test_connect_probe_passes_against_a_live_server() -> None:
    with UpstreamServer() as server:
        assert connect_probe(server.base_url, timeout=2.0)()
        settle(server, 1)


def test_connect_probe_fails_against_a_closed_port() -> None:
    assert not connect_probe(f"http://127.0.0.1:{closed_port()}/v1", timeout=2.0)()


def test_connect_probe_completes_tls_with_a_trusted_ca() -> None:
    with UpstreamServer(tls=True) as server:
        assert server.ca_cert_path is not None
        trusted = ssl.create_default_context(cafile=server.ca_cert_path)
        assert connect_probe(server.base_url, timeout=2.0, ssl_context=trusted)()
        # The system store does not know the test CA: the handshake fails.
        assert not connect_probe(server.base_url, timeout=2.0)()
        settle(server, 2)


def test_connect_probe_fails_tls_against_a_plain_http_server() -> None:
    with UpstreamServer() as server:
        url = server.base_url.replace("http://", "https://")
        assert not connect_probe(url, timeout=2.0)()
        settle(server, 1)


def test_connect_probe_gives_up_on_a_silent_peer_after_its_timeout() -> None:
    # The kernel completes the TCP handshake from the backlog; nobody answers the TLS hello.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        assert not connect_probe(f"https://127.0.0.1:{port}", timeout=0.2)()
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("url", ["ftp://example.com", "http://", "example.com:80",
                                 "http://127.0.0.1:99999"])
def test_connect_probe_rejects_urls_it_cannot_connect_to(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        connect_probe(url, timeout=1.0)
    assert caught.value.field == "url"


def test_stop_without_waiting_lets_the_last_thread_to_end_call_on_stop_once() -> None:
    name = unique("onstop")
    ended: list[str] = []
    checker = HealthChecker({"a": Switch(), "b": Switch()}, FAST, name=name,
                            on_stop=lambda: ended.append(threading.current_thread().name))
    checker.start()
    checker.stop(timeout=0)  # returns at once; the threads end by themselves
    wait_until(lambda: not threads_named(name))
    assert len(ended) == 1
    assert ended[0].startswith(f"rag_llm-health-{name}-")


def test_stop_from_a_checking_thread_does_not_try_to_join_itself() -> None:
    name = unique("selfstop")
    errors: list[BaseException] = []

    def stopping() -> bool:
        try:
            checker.stop()
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)
        return True

    checker = HealthChecker({"a": stopping}, FAST, name=name)
    checker.start()
    wait_until(lambda: not threads_named(name))
    assert errors == []


# -- a provider's checks ------------------------------------------------------------------


def test_a_provider_dropped_unclosed_warns_and_its_checks_stop_and_free_their_sockets(
    upstream: UpstreamServer,
) -> None:
    name = unique("dropped")
    fds_before = open_fds()
    provider = create_provider("embedding", provider_config(
        upstream, name=name, health_check={"interval": 0.05, "timeout": 0.5}))
    provider.embed(["x"])
    wait_until(lambda: len(threads_named(name)) == 1 and any(
        r.path == "/v1/models" for r in upstream.requests))
    collected = weakref.ref(provider)
    # Collected at once: the checker's thread does not keep it alive, nor does a cycle.
    with pytest.warns(ResourceWarning) as caught:  # its pool's warning comes too
        del provider
    assert collected() is None
    assert any(f"unclosed EmbeddingProvider {name!r}" in str(w.message) for w in caught)
    wait_until(lambda: not threads_named(name))
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        gc.collect()
    assert [w for w in leaked if issubclass(w.category, ResourceWarning)] == []
    wait_until(lambda: open_fds() == fds_before)


def test_a_closed_provider_with_checks_is_dropped_without_a_warning(
    upstream: UpstreamServer,
) -> None:
    name = unique("closed")
    provider = create_provider("embedding", provider_config(
        upstream, name=name, health_check={"interval": 0.05, "timeout": 0.5}))
    provider.embed(["x"])
    provider.close()
    assert not threads_named(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del provider
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert upstream.wait_until(lambda s: s.connections_open == 0, timeout=3.0)
