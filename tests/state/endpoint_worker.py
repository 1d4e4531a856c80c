"""A process sharing endpoint state: ``python endpoint_worker.py '<json>'`` makes calls
through one provider for ``duration`` seconds, ``pause`` apart, and prints one JSON line of
what it saw: calls, errors, each endpoint's breaker and health, the probes it sent.

``operation`` is ``embed`` or ``chat``; ``go`` is a file to wait for, so that every process
starts together; ``until_open`` ends the calls once that endpoint's breaker is open.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

MARK = "@worker "


def _wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    from rag_llm import create_provider

    kind = "llm" if spec.get("operation") == "chat" else "embedding"
    provider = create_provider(kind, spec["provider"])
    print(MARK + json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    if spec.get("go"):
        await asyncio.to_thread(_wait_for, spec["go"])
    ok = errors = 0
    opened_at = None
    stop_at = time.monotonic() + spec.get("duration", 1.0)
    until_open = spec.get("until_open")
    while time.monotonic() < stop_at:
        try:
            if kind == "llm":
                await provider.achat([{"role": "user", "content": "x"}])
            else:
                await provider.aembed("x")
            ok += 1
        except Exception:
            errors += 1
        if until_open is not None:
            states = {e.name: e.breaker for e in provider.routing_stats().endpoints}
            if states[until_open] == "open":
                opened_at = time.monotonic()
                break
        await asyncio.sleep(spec.get("pause", 0.0))
    stats = provider.routing_stats()
    checker = provider.router.health.view.checker
    result = {"pid": os.getpid(), "ok": ok, "errors": errors, "opened_at": opened_at,
              "healthy": {e.name: e.healthy for e in stats.endpoints},
              "breaker": {e.name: e.breaker for e in stats.endpoints},
              "probes": checker.probes_run() if checker is not None else {}}
    await provider.aclose()
    return result


def main() -> None:
    print(MARK + json.dumps(asyncio.run(_run(json.loads(sys.argv[1])))), flush=True)


if __name__ == "__main__":
    main()
