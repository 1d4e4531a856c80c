"""A process of a service under test: ``python worker.py '<json>'`` makes the calls the
JSON asks for through one provider and prints a JSON line when ready, then one of what
happened.

``skew`` (seconds) moves this process's ``time.time`` and ``time.monotonic``, to show that
only Redis's clock counts; ``go`` is a file to wait for, so that every process starts
together.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

# Lines for the test start with this; the rest of stdout is the provider's events.
MARK = "@worker "


def _skew(seconds: float) -> None:
    if seconds:
        real_time, real_monotonic = time.time, time.monotonic
        time.time = lambda: real_time() + seconds  # type: ignore[assignment]
        time.monotonic = lambda: real_monotonic() + seconds  # type: ignore[assignment]


def _wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    from rag_llm import create_provider

    provider = create_provider("embedding", spec["provider"])
    ok = errors = 0
    kinds: dict[str, int] = {}
    # Connections open before the start: arrivals then trail admissions by one round trip.
    await provider.awarmup()
    print(MARK + json.dumps({"ready": True}), flush=True)
    if spec.get("go"):
        await asyncio.to_thread(_wait_for, spec["go"])
    started = time.monotonic()
    stop_at = started + spec.get("duration", 0.0)

    async def one() -> None:
        nonlocal ok, errors
        try:
            await provider.aembed("x")
            ok += 1
        except Exception as exc:
            errors += 1
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1

    async def task() -> None:
        if spec.get("duration"):
            while time.monotonic() < stop_at:
                await one()
        else:
            for _ in range(spec.get("calls", 1)):
                await one()

    await asyncio.gather(*(task() for _ in range(spec["tasks"])))
    await provider.aclose()
    return {"ok": ok, "errors": errors, "kinds": kinds,
            "seconds": time.monotonic() - started}


def main() -> None:
    spec = json.loads(sys.argv[1])
    _skew(spec.get("skew", 0.0))
    print(MARK + json.dumps(asyncio.run(_run(spec))), flush=True)


if __name__ == "__main__":
    main()
