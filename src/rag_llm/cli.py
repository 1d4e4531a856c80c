"""The ``rag-llm`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from rag_llm.api import create_app
    except ImportError:
        print("rag-llm serve needs the server extra: pip install 'rag-llm[server]'",
              file=sys.stderr)
        return 2
    from rag_llm.config import Settings
    from rag_llm.locator import ServiceLocator
    from rag_llm.observability import configure_logging

    settings = Settings.load(args.config)
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(create_app(ServiceLocator(settings)), host=args.host, port=args.port,
                log_level=settings.log_level)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-llm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--config", help="TOML or YAML config file (default: $RAG_LLM_CONFIG)")
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rag_llm.errors import ConfigError

    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"rag-llm: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
