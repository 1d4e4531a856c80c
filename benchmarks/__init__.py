"""rag-llm's benchmark suite: rag-llm's providers side by side with the clients users pick.

Run it with ``python -m benchmarks`` from the repository root (``--help`` lists the options).
It starts nginx on 127.0.0.1 as the upstream (HTTP and HTTPS, fixed OpenAI-shaped JSON),
optionally behind a latency-injecting proxy, drives every client in its own subprocess,
and writes ``results.json``, ``report.md`` and PNG charts. See /shared/BENCHMARKS.md for the
method this follows.
"""
