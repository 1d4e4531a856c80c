"""A worker subprocess that runs one client: ``python -m benchmarks.worker --client NAME``.

One client per process keeps imports, garbage and CPU time of one peer away from another.
The worker imports its library once, says it is ready, then serves one JSON command per
line on stdin (``load``, ``memory``, ``exit``) and answers one JSON line each. Anything the
libraries print goes to stderr, so the protocol stream stays clean.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from benchmarks.clients import ClientSpec, Target, client_specs
from benchmarks.load import LoadSpec, measure_memory, run_load

__all__ = ["main"]


def _version(spec: ClientSpec) -> str:
    if spec.distribution == "python":
        return platform.python_version()
    try:
        return importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _serve(spec: ClientSpec, commands: TextIO, send: Any) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        for line in commands:
            command = json.loads(line)
            if command["op"] == "exit":
                break
            try:
                target = Target(command["base_url"], command["ca_path"], command.get("state_url"))
                if command["op"] == "load":
                    result = run_load(spec.mode, spec.factory, target,
                                      LoadSpec(**command["load"]), loop)
                elif command["op"] == "memory":
                    result = measure_memory(spec.mode, spec.factory, target,
                                            command["connections"], loop)
                else:
                    raise ValueError(f"unknown op {command['op']!r}")
                result["ok"] = True
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            send(result)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("--client", required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    # The protocol gets the real stdout; stray prints of any library go to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    spec = client_specs().get(args.client)
    if spec is None:
        send({"ok": False, "error": f"unknown client {args.client!r}"})
        return 2
    for module in (spec.module, *spec.requires):
        try:
            importlib.import_module(module)  # imported here, outside every measured window
        except Exception as exc:
            send({"ok": False, "error": f"cannot import {module}: {exc}"})
            return 0
    send({"ok": True, "version": _version(spec), "pid": os.getpid()})
    _serve(spec, sys.stdin, send)
    return 0


if __name__ == "__main__":
    sys.exit(main())
