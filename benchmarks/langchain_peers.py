"""``python -m benchmarks.langchain_peers``: LangChain's OpenAI classes against rag-llm's, one run.

The same workloads, through LangChain, both ways:

- ``embeddings``: ``--calls`` short texts, one ``aembed_query`` each, ``--concurrency`` in
  flight, through ``langchain_openai.OpenAIEmbeddings`` (``encoding_format="float"``) and
  through ``RagLLMEmbeddings``;
- ``chat``: as many ``ainvoke`` calls through ``ChatOpenAI`` and through ``ChatRagLLM``.

The upstream is nginx on 127.0.0.1 (``benchmarks.upstream``) with the suite's fixed bodies: a
1,536-float embedding and a chat completion, so the client, not the server, is measured. Each
client runs in its own interpreter (``--worker``), pinned to CPU 0 with nginx on CPU 1 unless
``--no-pin``; it warms up, then reports wall time and its own CPU time (``getrusage``) over
the measured calls. Repeats interleave the clients, rotating their order. Connections are
counted in nginx's access log. A cell stops at its calls or ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from benchmarks.harness import REPO_ROOT, child_env
from benchmarks.payload import API_KEY, DIMENSIONS, MODEL

__all__ = ["main"]

CHAT_MODEL: Final = "gpt-4o-mini"
# (workload, client) in the order a repeat starts from; each workload's rag-llm client last.
CLIENTS: Final = {
    "embeddings": ("OpenAIEmbeddings", "RagLLMEmbeddings"),
    "chat": ("ChatOpenAI", "ChatRagLLM"),
}
RAGLLM: Final = {"embeddings": "RagLLMEmbeddings", "chat": "ChatRagLLM"}
_CLIENT_CPU: Final = 0
_SERVER_CPU: Final = 1
_WARMUP_CALLS: Final = 200


# -- the worker: one client in its own interpreter ------------------------------------------


def _embeddings_call(client: str, base_url: str) -> tuple[Callable[[str], Awaitable[Any]],
                                                          Callable[[], Awaitable[None]]]:
    if client == "OpenAIEmbeddings":
        from langchain_openai import OpenAIEmbeddings

        # check_embedding_ctx_length=False: no tiktoken (it would download its tables).
        # encoding_format="float", as the suite's openai client: the same JSON floats for
        # both (the SDK asks for base64 by default, which nginx's fixed body ignores).
        openai = OpenAIEmbeddings(model=MODEL, base_url=base_url,
                                  api_key=API_KEY,  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False,
                                  model_kwargs={"encoding_format": "float"})

        async def close_openai() -> None:
            await openai.async_client._client.close()

        return openai.aembed_query, close_openai
    from rag_llm.integrations.langchain import RagLLMEmbeddings

    ours = RagLLMEmbeddings(config={"type": "openai", "base_url": base_url, "api_key": API_KEY,
                                    "model": MODEL})
    return ours.aembed_query, ours.aclose


def _chat_call(client: str, base_url: str) -> tuple[Callable[[str], Awaitable[Any]],
                                                    Callable[[], Awaitable[None]]]:
    if client == "ChatOpenAI":
        from langchain_openai import ChatOpenAI

        openai = ChatOpenAI(model=CHAT_MODEL, base_url=base_url,
                            api_key=API_KEY)  # type: ignore[arg-type]

        async def close_openai() -> None:
            await openai.root_async_client.close()

        return openai.ainvoke, close_openai
    from rag_llm.integrations.langchain import ChatRagLLM

    ours = ChatRagLLM(config={"type": "openai", "base_url": base_url, "api_key": API_KEY,
                              "model": CHAT_MODEL})
    return ours.ainvoke, ours.aclose


def _check(workload: str, result: Any) -> None:
    """Both clients must hand back the same thing: a 1,536-float vector, or a message."""
    if workload == "embeddings":
        if not isinstance(result, list) or len(result) != DIMENSIONS:
            raise ValueError(f"expected {DIMENSIONS} floats, got {type(result).__name__}")
    elif not getattr(result, "content", None):
        raise ValueError(f"expected a message with content, got {result!r}")


async def _drive(call: Callable[[str], Awaitable[Any]], workload: str, calls: int,
                 concurrency: int, deadline: float) -> int:
    """``calls`` calls from ``concurrency`` workers, stopping at ``deadline``; how many ran."""
    remaining = iter(range(calls))
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in remaining:
            if time.monotonic() > deadline:
                return
            _check(workload, await call(f"short text number {i}"))
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _run_worker(args: argparse.Namespace) -> dict[str, Any]:
    workload = next(w for w, clients in CLIENTS.items() if args.worker in clients)
    factory = _embeddings_call if workload == "embeddings" else _chat_call
    call, close = factory(args.worker, args.base_url)
    try:
        warmup = min(_WARMUP_CALLS, args.calls)
        await _drive(call, workload, warmup, args.concurrency, time.monotonic() + args.max_seconds)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        done = await _drive(call, workload, args.calls, args.concurrency,
                            time.monotonic() + args.max_seconds)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"client": args.worker, "workload": workload, "warmup": warmup, "calls": done,
            "seconds": seconds, "cpu_seconds": cpu}


# -- the parent: nginx, interleaved repeats, the report ------------------------------------


@dataclass(frozen=True)
class Sample:
    workload: str
    client: str
    calls: int
    seconds: float
    cpu_seconds: float
    connections: int
    non_200: int

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_ms_per_call(self) -> float:
        return self.cpu_seconds * 1000 / self.calls


def _sample(nginx: Any, client: str, args: argparse.Namespace, pin: bool) -> Sample:
    command = [sys.executable, "-m", "benchmarks.langchain_peers", "--worker", client,
               "--base-url", nginx.base_url("http"), "--calls", str(args.calls),
               "--concurrency", str(args.concurrency), "--max-seconds", str(args.max_seconds)]
    mark = nginx.log_mark()
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, check=False,
        timeout=args.max_seconds * 2 + 120,
        preexec_fn=(lambda: os.sched_setaffinity(0, {_CLIENT_CPU})) if pin else None)
    if done.returncode != 0:
        raise RuntimeError(f"{client} failed: {done.stderr[-1500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    window = nginx.log_window(mark, expect=result["warmup"] + result["calls"])
    return Sample(result["workload"], client, result["calls"], result["seconds"],
                  result["cpu_seconds"], window.connections_used, window.non_200)


def _cell(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def _report(samples: list[Sample], args: argparse.Namespace, nginx_version: str,
            pinned: bool) -> str:
    lines = [
        f"LangChain peers: {args.calls} calls per cell, c={args.concurrency}, "
        f"{args.repeat} interleaved repeats, nginx {nginx_version} on 127.0.0.1 (HTTP), "
        f"client {'pinned to CPU 0, nginx to CPU 1' if pinned else 'not pinned'}; "
        "median [min-max].",
        "",
        "| workload | client | calls/s | client CPU ms/call | connections | "
        "rag-llm calls/s ratio | rag-llm CPU ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, clients in CLIENTS.items():
        by_client = {c: [s for s in samples if s.client == c] for c in clients}
        if not all(by_client.values()):
            continue
        ours = by_client[RAGLLM[workload]]
        ours_rate = statistics.median(s.per_second for s in ours)
        ours_cpu = statistics.median(s.cpu_ms_per_call for s in ours)
        for client, rows in by_client.items():
            rate = statistics.median(s.per_second for s in rows)
            cpu = [s.cpu_ms_per_call for s in rows]
            ratios = ("" if client == RAGLLM[workload] else
                      f"{ours_rate / rate:.2f}x | {ours_cpu / statistics.median(cpu):.2f}x")
            connections = "/".join(str(s.connections) for s in rows)
            lines.append(f"| {workload} | `{client}` | {_cell([s.per_second for s in rows])} | "
                         f"{statistics.median(cpu):.2f} [{min(cpu):.2f}-{max(cpu):.2f}] | "
                         f"{connections} | {ratios or '- | -'} |")
    errors = sum(s.non_200 for s in samples)
    if errors:
        lines.append(f"\n{errors} non-200 responses logged by nginx.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.langchain_peers",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=10_000, help="measured calls per cell")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="bound of one cell")
    parser.add_argument("--workloads", default="embeddings,chat")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", default=None, help="also write every sample here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        from rag_llm.observability import configure_logging

        configure_logging(level="warning")
        print(json.dumps(asyncio.run(_run_worker(args))))
        return 0

    from benchmarks.upstream import Nginx

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in CLIENTS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; expected {', '.join(CLIENTS)}")
    order = [client for w in workloads for client in CLIENTS[w]]
    pin = not args.no_pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    samples: list[Sample] = []
    with Nginx(cpu=_SERVER_CPU if pin else None) as nginx:
        for repeat in range(args.repeat):
            shift = repeat % len(order)
            for client in order[shift:] + order[:shift]:
                samples.append(_sample(nginx, client, args, pin))
                print(f"repeat {repeat + 1}: {client} {samples[-1].per_second:,.0f} calls/s",
                      file=sys.stderr)
        version = nginx.version
    print(_report(samples, args, version, pin))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([s.__dict__ for s in samples], out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
