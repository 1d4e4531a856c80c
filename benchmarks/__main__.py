"""``python -m benchmarks``: run the suite, or re-render a report from a results.json."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.charts import write_charts
from benchmarks.clients import client_specs
from benchmarks.harness import REPO_ROOT
from benchmarks.plan import PLANS
from benchmarks.report import render, write_report
from benchmarks.results import read_results
from benchmarks.scenarios import DESCRIPTIONS, SCENARIOS

__all__ = ["main"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rag-llm's providers side by side with httpx, httpx2, aiohttp, urllib3, "
                    "the openai SDK and LiteLLM, against nginx on 127.0.0.1.",
        epilog="Scenarios: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()),
    )
    parser.add_argument("--quick", action="store_const", const="quick", dest="plan",
                        help="about 2 minutes: fewer requests, concurrencies and RTTs")
    parser.add_argument("--plan", choices=sorted(PLANS), default="default")
    parser.add_argument("--scenarios", type=_csv, default=SCENARIOS,
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--clients", type=_csv, default=None,
                        help="comma-separated names or shell patterns, e.g. 'ragllm-*,aiohttp'")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: benchmarks/results; with --render, "
                             "the results file's directory)")
    parser.add_argument("--repeats", type=int, help="override the plan's repeats")
    parser.add_argument("--duration", type=float, help="override seconds per load cell")
    parser.add_argument("--budget", type=float, help="override the whole run's bound (s)")
    parser.add_argument("--http", action="store_true",
                        help="also measure plain HTTP (default: HTTPS only)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the clients and exit")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="only re-render report.md and charts from a results.json")
    return parser


def _outputs(out_dir: Path, results: dict[str, Any], charts: bool) -> list[Path]:
    paths = [write_report(out_dir, results)]
    if charts:
        paths += write_charts(out_dir, results)
    return paths


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: servers get stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, spec in client_specs().items():
            print(f"{name:24} {spec.mode:5}  {spec.description}")
        return 0
    if args.render is not None:
        results = read_results(args.render)
        out_dir = args.out or args.render.parent
        for path in _outputs(out_dir, results, not args.no_charts):
            print(path)
        return 0
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    from benchmarks.runner import RunOptions, run
    from benchmarks.upstream import NginxUnavailable

    plan = PLANS[args.plan or "default"].with_overrides(
        repeats=args.repeats, duration_s=args.duration, budget_s=args.budget,
        schemes=("https", "http") if args.http else None,
    )
    options = RunOptions(plan=plan, scenarios=args.scenarios, clients=args.clients,
                         out_dir=args.out or REPO_ROOT / "benchmarks" / "results",
                         pin=not args.no_pin,
                         progress=not args.no_progress, charts=not args.no_charts)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results, written = run(options, _outputs)
    except NginxUnavailable as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    print(render(results))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
