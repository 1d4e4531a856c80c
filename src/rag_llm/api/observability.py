"""``/metrics``, ``/health`` and ``/health/ready``: what the pools are doing, read-only.

None of these calls a model endpoint: they read the statistics the pools already keep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from rag_llm.metrics import CONTENT_TYPE, render_metrics
from rag_llm.pool import TRAFFIC, ClientSnapshot, PoolSnapshot, merge_pools

if TYPE_CHECKING:
    from rag_llm.workers import WorkerSet

__all__ = ["observability_router", "pool_readiness", "provider_pools"]

# A provider whose latest call failed within this many seconds, with no success since,
# is failing.
FAILING_WINDOW_S: Final = 30.0


def pool_readiness(snapshot: PoolSnapshot, now: float | None = None) -> dict[str, Any]:
    """One provider's pool for ``/health/ready``: limits, connections, errors, verdict."""
    now = time.time() if now is None else now
    active = sum(c.active for c in snapshot.clients)
    idle = sum(c.idle for c in snapshot.clients)
    waiting = sum(c.stats.requests_waiting for c in snapshot.clients)
    last_error_at = max((c.stats.last_error_at or 0.0 for c in snapshot.clients), default=0.0)
    last_success_at = max((c.stats.last_success_at or 0.0 for c in snapshot.clients),
                          default=0.0)
    last_error = next((c.stats.last_error for c in snapshot.clients
                       if c.stats.last_error_at == last_error_at and last_error_at), None)
    problems = []
    if waiting and active >= snapshot.max_connections:
        problems.append(f"saturated: {active} of max_connections={snapshot.max_connections} "
                        f"busy, {waiting} waiting")
    if last_error_at > last_success_at and now - last_error_at < FAILING_WINDOW_S:
        problems.append(f"failing: {last_error}")
    if snapshot.state == "closed":
        problems.append("closed")
    return {
        "ready": not problems,
        "problems": problems,
        "state": snapshot.state,
        "transport": snapshot.transport,
        "max_connections": snapshot.max_connections,
        "max_keepalive_connections": snapshot.max_keepalive_connections,
        "keepalive_expiry": snapshot.keepalive_expiry,
        "active": active,
        "idle": idle,
        "waiting": waiting,
        "last_error": last_error,
        "last_error_at": last_error_at or None,
        "last_success_at": last_success_at or None,
    }


def _traffic(group: list[PoolSnapshot]) -> PoolSnapshot:
    """A provider's calls: its traffic pools (every endpoint's), summed."""
    (merged,) = merge_pools(s for s in group if s.role == TRAFFIC)
    return merged


def _client_health(c: ClientSnapshot) -> dict[str, Any]:
    return {"client": c.client, "library": c.library, "active": c.active, "idle": c.idle,
            "connections_opened": c.stats.connections_opened}


def _pool_health(s: PoolSnapshot) -> dict[str, Any]:
    return {"state": s.state, "max_connections": s.max_connections,
            "max_keepalive_connections": s.max_keepalive_connections,
            "clients": [_client_health(c) for c in s.clients]}


def provider_pools(providers: Mapping[str, Any]) -> dict[str, list[PoolSnapshot]]:
    """Each provider's pools: every endpoint's, then its health checks' own."""
    found: dict[str, list[PoolSnapshot]] = {}
    for name, provider in providers.items():
        if hasattr(provider, "pools_stats"):
            found[name] = provider.pools_stats()
        elif hasattr(provider, "pool_stats"):
            found[name] = [provider.pool_stats()]
    return found


def observability_router(providers: Callable[[], Mapping[str, Any]],
                         problems: Callable[[], Mapping[str, str]] = dict, *,
                         workers: WorkerSet | None = None) -> APIRouter:
    """Routes over ``providers()`` (the locator's providers built so far) and ``problems()``
    (the configured providers that cannot be built, with the reason).

    With ``workers`` (several worker processes), ``/metrics`` and ``/health`` show the
    whole service, every worker's figures added up, and ``/health`` lists the workers.
    """
    router = APIRouter(tags=["observability"])

    def pools() -> dict[str, list[PoolSnapshot]]:
        if workers is not None:
            return workers.groups()
        return provider_pools(providers())

    @router.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics of every connection pool of the service."""
        body = render_metrics() if workers is None else workers.render_metrics()
        return Response(body, media_type=CONTENT_TYPE)

    @router.get("/health")
    def health() -> JSONResponse:
        """Liveness, with the state and connections of each provider's pools.

        A provider's figures sum its endpoints' pools; ``pools`` lists each pool apart,
        health checks' own (role ``probe``) included. A configured provider that cannot be
        built makes the status ``error`` (503), with the reason under its name. With several
        workers, each pool's figures add up every worker's, and ``workers`` gives their
        count and pids.
        """
        broken = problems()
        report: dict[str, Any] = {name: {"state": "error", "error": reason}
                                  for name, reason in broken.items()}
        for name, group in pools().items():
            report[name] = {**_pool_health(_traffic(group)), "pools": [
                {"endpoint": s.endpoint, "role": s.role, **_pool_health(s)} for s in group]}
        body: dict[str, Any] = {"status": "error" if broken else "ok", "providers": report}
        if workers is not None:
            body["workers"] = workers.workers()
        return JSONResponse(body, status_code=503 if broken else 200)

    @router.get("/health/ready")
    def ready() -> JSONResponse:
        """Ready unless a provider's pool is saturated, failing or closed (then 503): this
        worker's pools, whichever worker answers, since each holds its own limits."""
        verdicts = {name: pool_readiness(_traffic(group))
                    for name, group in provider_pools(providers()).items()}
        is_ready = all(v["ready"] for v in verdicts.values())
        return JSONResponse({"ready": is_ready, "providers": verdicts},
                            status_code=200 if is_ready else 503)

    return router

