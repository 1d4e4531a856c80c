"""``StateBackend``: one provider's connection to the Redis that holds its shared limits.

It owns a small sync client (for sync calls and the lease renewer thread) and one asyncio
client per event loop (async calls never block their loop on Redis), both with
``socket_timeout`` set to the state timeout and no retries: past the timeout, the caller's
fallback policy decides. Every failure is an :class:`~rag_llm.errors.StateUnavailableError`
that names the URL without its password; the backend then rests for a short cool-down,
during which ``usable()`` is false, and one caller at a time probes it afterwards. Each
transition is logged once: ``state_backend_unavailable``, ``state_backend_recovered``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from rag_llm.config import StateConfig
from rag_llm.errors import StateUnavailableError
from rag_llm.observability.events import get_logger
from rag_llm.state._admission import (
    MAX_BATCH,
    AdmitBatcher,
    Answer,
    Ask,
    EndpointLimits,
    answers_of,
)
from rag_llm.state._counts import STATE_COUNTS, StateCounts
from rag_llm.state._scripts import ADMIT, ENDPOINT_PUBLISH, ENDPOINT_READ, HOLD, LEASE_RENEW, UNHOLD
from rag_llm.state._wire import ScriptWires

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["DEFAULT_COOLDOWN", "Answer", "Ask", "EndpointLimits", "SharedVerdicts", "StateBackend",
           "live_backends"]

_log = get_logger("rag_llm.state")
# After a failure the backend is left alone this long before one caller tries it again.
DEFAULT_COOLDOWN: Final = 1.0
# Connections per client: commands are short, and waiting for one counts as the timeout.
_MAX_CONNECTIONS: Final = 16
# A refused caller's hold on the tokens limit outlives its wait by this much.
_HOLD_GRACE: Final = 1.0
# Releases wait this long for a trip to carry them before the flusher sends them itself.
_FLUSH_DELAY: Final = 0.01
# Connections of the flusher's own client: releases never queue behind calls' commands.
_FLUSH_CONNECTIONS: Final = 2


class _Scripts:
    """The registered scripts of one client (EVALSHA, loading them again after NOSCRIPT)."""

    __slots__ = ("admit", "hold", "lease_renew", "publish", "read", "unhold")

    def __init__(self, client: Any) -> None:
        self.admit = client.register_script(ADMIT)
        self.lease_renew = client.register_script(LEASE_RENEW)
        self.publish = client.register_script(ENDPOINT_PUBLISH)
        self.read = client.register_script(ENDPOINT_READ)
        self.hold = client.register_script(HOLD)
        self.unhold = client.register_script(UNHOLD)


@dataclass(frozen=True, slots=True)
class SharedVerdicts:
    """What Redis holds on one endpoint: each verdict (None: none) and its seconds left."""

    breaker: str | None
    breaker_left: float
    health: str | None
    health_left: float


class StateBackend:
    """Shared limits of one provider in Redis: in-flight leases and GCRA rate limits.

    A call's admission (rate limits and lease together) is one script run, batched with the
    other calls of its event loop (:mod:`rag_llm.state._admission`); a finished call's lease
    is queued and rides on the next admission to its endpoint, or goes a few milliseconds
    later from the flusher thread on a client of its own.
    """

    def __init__(self, config: StateConfig, *, provider: str, lease_ttl: float = 30.0,
                 cooldown: float = DEFAULT_COOLDOWN) -> None:
        try:
            # The optional dependency, checked when configured; its asyncio part imported
            # here, not by the first async call (80 ms that would stall its event loop).
            import redis.asyncio  # noqa: F401
        except ImportError:
            from rag_llm.errors import ConfigError

            raise ConfigError("state", config.shown_url,
                              "needs redis-py: pip install 'rag-llm[redis]'") from None
        self.config = config
        self.provider = provider
        self.lease_ttl = lease_ttl
        self._ttl_ms = max(int(lease_ttl * 1000), 1)
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._sync: tuple[redis.Redis, _Scripts] | None = None
        self._flush_client: tuple[redis.Redis, _Scripts] | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ScriptWires] = (
            weakref.WeakKeyDictionary())
        self._down = False
        self._retry_at = 0.0
        self._closed = False
        # Leases held by this process, renewed by one thread while there are any.
        self._held: dict[str, set[str]] = defaultdict(set)
        self._renewer: threading.Thread | None = None
        self._wake = threading.Event()
        # Leases finished with, by key, waiting for a trip or the flusher to release them.
        self._releases: dict[str, list[str]] = defaultdict(list)
        self._flusher: threading.Thread | None = None
        self._flush_due = threading.Event()
        self._flush_armed = False  # the flusher is already due to run: no need to wake it
        self._batchers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, AdmitBatcher]] = weakref.WeakKeyDictionary()
        # Counters for metrics (kept past this backend's life), and what counts the
        # global_max_in_flight slots the process holds, Redis leases or local ones.
        self.counts = StateCounts()
        self.lease_counters: list[Callable[[], int]] = []
        # When shared endpoint state was last read from Redis (monotonic; 0: never).
        self.synced_at = 0.0
        self.created_at = time.monotonic()
        STATE_COUNTS.track(self, (provider, self.counts))
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<StateBackend {self.config.shown_url} prefix={self.config.prefix!r}>"

    def key(self, endpoint: str, what: str) -> str:
        """``{prefix}:{<provider>/<endpoint>}:<what>``: one endpoint's keys share a slot."""
        return f"{self.config.prefix}:{{{self.provider}/{endpoint}}}:{what}"

    # -- health ----------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether to ask Redis now: true unless it failed within the cool-down. After the
        cool-down, one caller is let through to probe it and the rest stay local."""
        if not self._down:
            return True
        with self._lock:
            now = time.monotonic()
            if not self._down or now >= self._retry_at:
                self._retry_at = now + self._cooldown
                return True
            return False

    @property
    def available(self) -> bool:
        return not self._down

    def unavailable(self, detail: str = "failed recently; resting") -> StateUnavailableError:
        return StateUnavailableError(self.config.shown_url, detail, provider=self.provider)

    def _failed(self, exc: BaseException) -> StateUnavailableError:
        detail = f"{type(exc).__name__}: {exc}"
        password = _password(self.config.url)
        if password:
            detail = detail.replace(password, "**********")
        self.counts.add("errors")
        with self._lock:
            was_down = self._down
            self._down = True
            self._retry_at = time.monotonic() + self._cooldown
        if not was_down:
            _log.warning("state_backend_unavailable", provider=self.provider,
                         url=self.config.shown_url, error=detail,
                         retry_in=self._cooldown)
        return self.unavailable(detail)

    def _succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            was_down = self._down
            self._down = False
        if was_down:
            _log.info("state_backend_recovered", provider=self.provider,
                      url=self.config.shown_url)

    # -- clients ---------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        timeout = self.config.timeout
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                "max_connections": _MAX_CONNECTIONS, "timeout": timeout,
                "health_check_interval": 0}

    def _sync_client(self) -> tuple[redis.Redis, _Scripts]:
        client = self._sync
        if client is None:
            with self._lock:
                if self._closed:
                    raise self.unavailable("closed")
                if self._sync is None:
                    self._sync = self._new_sync_client(_MAX_CONNECTIONS)
                client = self._sync
        return client

    def _flusher_client(self) -> tuple[redis.Redis, _Scripts]:
        client = self._flush_client
        if client is None:
            with self._lock:  # not refused once closed: close() flushes what is left
                if self._flush_client is None:
                    self._flush_client = self._new_sync_client(_FLUSH_CONNECTIONS)
                client = self._flush_client
        return client

    def _new_sync_client(self, connections: int) -> tuple[redis.Redis, _Scripts]:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = {**self._options(), "max_connections": connections}
        pool = redis.BlockingConnectionPool.from_url(self.config.url, **options)
        made = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        return made, _Scripts(made)

    def _async_wires(self) -> ScriptWires:
        """This loop's connections for ``ADMIT``, all async calls ask of Redis."""
        loop = asyncio.get_running_loop()
        wires = self._async.get(loop)
        if wires is None:
            import redis.asyncio

            if self._closed:
                raise self.unavailable("closed")
            pool = redis.asyncio.BlockingConnectionPool.from_url(self.config.url,
                                                                 **self._options())
            wires = self._async[loop] = ScriptWires(pool, ADMIT, _MAX_CONNECTIONS)
        return wires

    def _run(self, step: Any, client: Callable[[], tuple[Any, _Scripts]] | None = None) -> Any:
        """``step(client, scripts)`` on the sync client (or ``client()``); failures become
        StateUnavailableError."""
        from redis.exceptions import RedisError

        try:
            result = step(*(client or self._sync_client)())
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        self._succeeded()
        return result

    async def _arun(self, step: Any) -> Any:
        from redis.exceptions import RedisError

        # The timeout bounds the whole step, not each read: a new connection sends four
        # handshake commands before the step's own, and a Redis answering each just inside
        # a socket timeout would hold a call for several. Cancelled, the step drops its
        # connection.
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                result = await step(self._async_wires())
        except TimeoutError as exc:
            raise self._failed(exc if str(exc) else TimeoutError(
                f"no answer within {timeout:g} s")) from None
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None
        self._succeeded()
        return result

    # -- admission -------------------------------------------------------------------

    def endpoint_limits(self, endpoint: str, limits: tuple[float, float, float, float],
                        cap: int) -> EndpointLimits:
        """One endpoint's limits for :meth:`admit`: ``limits`` are the requests' interval
        and tolerance, then the tokens' (interval 0: no such limit); ``cap`` the
        ``global_max_in_flight`` (0: none)."""
        keys = (self.key(endpoint, "rate:requests"), self.key(endpoint, "rate:tokens"),
                self.key(endpoint, "in_flight"))
        args = (*(_num(v) for v in limits), _num(_HOLD_GRACE), str(cap), str(self._ttl_ms))
        return EndpointLimits(keys, args)

    def admit(self, limits: EndpointLimits, ask: Ask) -> Answer:
        """One call's admission, with the releases waiting for ``limits``' endpoint."""
        released = self._take_releases(limits.leases)
        try:
            answers = self._run(lambda _c, s: self._admit_step(s, limits, [ask], released))
        except BaseException:
            self._keep_releases(limits.leases, _undone(released, [ask]))
            raise
        return answers[0]  # type: ignore[no-any-return]

    async def aadmit(self, limits: EndpointLimits, ask: Ask) -> Answer:
        """:meth:`admit` for async calls, batched with this loop's other calls to the
        endpoint."""
        loop = asyncio.get_running_loop()
        batchers = self._batchers.get(loop)
        if batchers is None:
            batchers = self._batchers[loop] = {}
        batcher = batchers.get(limits.leases)
        if batcher is None:
            async def trip(asks: list[Ask]) -> list[Answer]:
                released = self._take_releases(limits.leases)
                try:
                    return await self._arun(  # type: ignore[no-any-return]
                        lambda wires: self._aadmit_step(wires, limits, asks, released))
                except BaseException:
                    self._keep_releases(limits.leases, _undone(released, asks))
                    raise

            batcher = batchers[limits.leases] = AdmitBatcher(
                trip, lambda member: self.release(limits.leases, member))
        return await batcher.ask(ask)

    @staticmethod
    def _admit_args(limits: EndpointLimits, asks: list[Ask], released: list[str]) -> list[str]:
        args = [*limits.args, str(len(released)), *released]
        for ask in asks:
            args += [ask.ticket, _num(ask.cost), "1" if ask.rated else "0", ask.member,
                     "1" if ask.hold else "0"]
        return args

    def _admit_step(self, scripts: _Scripts, limits: EndpointLimits, asks: list[Ask],
                    released: list[str]) -> list[Answer]:
        args = self._admit_args(limits, asks, released)
        return answers_of(scripts.admit(keys=list(limits.keys), args=args))

    async def _aadmit_step(self, wires: ScriptWires, limits: EndpointLimits, asks: list[Ask],
                           released: list[str]) -> list[Answer]:
        return answers_of(await wires.run(limits.keys, self._admit_args(limits, asks, released)))

    # -- leases ----------------------------------------------------------------------

    def release(self, key: str, member: str) -> None:
        """Give back a lease: queued for the next admission to its endpoint, or for the
        flusher. Never a round trip on the caller's path."""
        with self._lock:
            if self._closed:
                return
            self._releases[key].append(member)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                 name=f"rag-llm-releases-{self.provider}")
                self._flusher.start()
            if self._flush_armed:
                return
            self._flush_armed = True
        self._flush_due.set()

    def _take_releases(self, key: str, most: int = MAX_BATCH) -> list[str]:
        with self._lock:
            waiting = self._releases.get(key)
            if not waiting:
                return []
            taken = waiting[:most]
            del waiting[:most]
            if not waiting:
                del self._releases[key]
            return taken

    def _keep_releases(self, key: str, members: list[str]) -> None:
        """Queue again releases that a failed trip may not have carried: removing a member
        twice is harmless, while a release lost would hold its slot for ``lease_ttl``."""
        if members:
            with self._lock:
                self._releases[key][:0] = members

    def _flush_loop(self) -> None:
        """Send the releases no admission carried within ``_FLUSH_DELAY``, on the flusher's
        own client. While Redis is unavailable they wait: they go with the next admission
        to their endpoint, or from here, tried again every cool-down, once a call has found
        Redis back; so no slot stays held by a lease already given back. Those of a process
        that dies lapse within ``lease_ttl``."""
        again: float | None = None
        while True:
            self._flush_due.wait(again)
            self._flush_due.clear()
            if self._closed:
                break
            time.sleep(_FLUSH_DELAY)
            with self._lock:
                self._flush_armed = False
            again = None if self._flush() else self._cooldown
        self._flush()

    def _flush(self) -> bool:
        """Send every queued release; False when some wait for Redis to come back."""
        with self._lock:
            work = {key: list(members) for key, members in self._releases.items()}
            self._releases.clear()
        if not work:
            return True
        if self._down:  # calls probe Redis; this thread only waits for it to be back
            for key, members in work.items():
                self._keep_releases(key, members)
            return False

        def step(client: Any, _s: _Scripts) -> None:
            pipe = client.pipeline(transaction=False)
            for key, members in work.items():
                pipe.zrem(key, *members)
            pipe.execute()

        try:
            self._run(step, self._flusher_client)
        except StateUnavailableError:  # counted and logged
            for key, members in work.items():
                self._keep_releases(key, members)
            return False
        return True

    def hold(self, key: str, member: str) -> None:
        """Renew ``member`` every ``lease_ttl / 3`` until :meth:`drop`."""
        with self._lock:
            self._held[key].add(member)
            if self._renewer is None and not self._closed:
                self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                                 name=f"rag-llm-leases-{self.provider}")
                self._renewer.start()

    def drop(self, key: str, member: str) -> None:
        with self._lock:
            members = self._held.get(key)
            if members is not None:
                members.discard(member)
                if not members:
                    del self._held[key]

    def held(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._held.values())

    def _renew_loop(self) -> None:
        """One thread per backend renews every lease the process holds, then exits when
        none is left (the next lease starts it again)."""
        while not self._wake.wait(self.lease_ttl / 3):
            with self._lock:
                work = {key: sorted(members) for key, members in self._held.items()}
                if not work or self._closed:
                    self._renewer = None
                    return
            for key, members in work.items():
                args = [self._ttl_ms, *members]
                try:
                    self._run(lambda _c, s, k=key, a=args: s.lease_renew(keys=[k], args=a))
                except StateUnavailableError:
                    break  # they lapse if Redis stays away; the fallback takes over
        with self._lock:
            self._renewer = None

    # -- shared endpoint state ---------------------------------------------------------

    def publish(self, key: str, kind: str, verdict: str, ttl: float, by: str) -> None:
        """Share one verdict (``kind`` "breaker" or "health") for ``ttl`` seconds of Redis
        time; ``ttl`` 0 withdraws it."""
        args = [kind, verdict, max(int(ttl * 1000), 0), by]
        self._run(lambda _c, s: s.publish(keys=[key], args=args))

    def read_verdicts(self, key: str) -> SharedVerdicts:
        """One round trip: the verdicts held on one endpoint, with their seconds left."""
        reply = self._run(lambda _c, s: s.read(keys=[key]))
        breaker, b_left, health, h_left = (
            item.decode() if isinstance(item, bytes) else str(item) for item in reply)
        return SharedVerdicts(breaker or None, float(b_left) / 1000, health or None,
                              float(h_left) / 1000)

    def hold_lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take or renew a lease held by one process at a time (SET NX PX)."""
        args = [holder, max(int(ttl * 1000), 1)]
        return bool(self._run(lambda _c, s: s.hold(keys=[key], args=args)))

    def let_go(self, key: str, holder: str) -> None:
        self._run(lambda _c, s: s.unhold(keys=[key], args=[holder]))

    def sync_age(self) -> float:
        """Seconds since shared endpoint state was last read (since creation if never)."""
        return time.monotonic() - (self.synced_at or self.created_at)

    def leases(self) -> int:
        """global_max_in_flight slots this process holds now, in Redis or locally."""
        return sum(count() for count in list(self.lease_counters))

    def ping(self) -> bool:
        try:
            return bool(self._run(lambda c, _s: c.ping()))
        except StateUnavailableError:
            return False

    # -- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop renewing and close the sync client; async clients close in :meth:`aclose`."""
        with self._lock:
            self._closed = True
            renewer, self._renewer = self._renewer, None
            flusher, self._flusher = self._flusher, None
        self._wake.set()
        self._flush_due.set()
        for thread in (renewer, flusher):
            if thread is not None and thread is not threading.current_thread():
                thread.join(self.config.timeout * 4 + 1.0)  # the flusher sends what is left
        with self._lock:
            clients = (self._sync, self._flush_client)
            self._sync = self._flush_client = None
        for client in clients:
            if client is not None:
                client[0].close()
                client[0].connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close this loop's async client, then everything :meth:`close` closes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        wires = self._async.pop(loop) if loop is not None and loop in self._async else None
        self._closed = True
        if wires is not None:
            await wires.aclose()
        await asyncio.to_thread(self.close)


_LIVE: Final[weakref.WeakSet[StateBackend]] = weakref.WeakSet()


def live_backends() -> list[StateBackend]:
    """Every backend still referenced and not closed, for metrics."""
    return [b for b in list(_LIVE) if not b._closed]


def _undone(released: list[str], asks: list[Ask]) -> list[str]:
    """What to remove after a trip that failed: its releases, and the leases it asked for,
    which the script may have taken before the answer was lost (members are never reused,
    so removing one that was never taken does nothing)."""
    return released + [ask.member for ask in asks if ask.member]


def _num(value: float) -> str:
    return f"{value:.9f}"


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).password
