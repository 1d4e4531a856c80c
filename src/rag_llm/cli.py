"""The ``rag-llm`` command line: ingest, list, delete and query documents; serve the API;
watch its connection pools with ``top``.

Importing this module needs no extra; each command imports what it uses and names the
extra to install when that is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rag_llm.config import Settings
    from rag_llm.locator import ServiceLocator
    from rag_llm.rag import AnswerEvent, IngestReport, RagService, RagSettings
    from rag_llm.rag.store import SearchFilter
    from rag_llm.remote import ServiceClient

__all__ = ["main"]


class _MissingExtraError(Exception):
    """A command needs an optional dependency that is not installed."""


def _settings(args: argparse.Namespace) -> tuple[Settings, RagSettings]:
    from rag_llm.config import Settings
    from rag_llm.observability import configure_logging

    try:
        from rag_llm.rag import RagSettings, resolve_settings
    except ImportError as exc:
        raise _MissingExtraError(f"needs the rag extra ({exc.name} is missing): "
                                 "pip install 'rag-llm[rag,local]'") from None
    settings = resolve_settings(Settings.load(args.config))
    rag = RagSettings.load(args.config).with_overrides(data_dir=args.data_dir)
    # Commands other than serve stay quiet unless a log level is asked for.
    level = settings.log_level if args.command == "serve" or os.environ.get(
        "RAG_LLM_LOG_LEVEL") else "warning"
    configure_logging(settings.log_format, level)
    return settings, rag


@contextmanager
def _service(args: argparse.Namespace) -> Iterator[tuple[ServiceLocator, RagService]]:
    from rag_llm.locator import ServiceLocator
    from rag_llm.rag import RagService

    settings, rag = _settings(args)
    locator = ServiceLocator(settings)
    try:
        locator.build_all()
        with RagService.from_locator(locator, rag) as service:
            yield locator, service
    finally:
        asyncio.run(locator.cleanup())


def _remote(args: argparse.Namespace) -> ServiceClient | None:
    """The running service to send this command to: ``--url``, else one announced in the
    data directory; None to work on the store directly."""
    from rag_llm.rag.settings import RagSettings
    from rag_llm.remote import RemoteError, ServiceClient, running_service

    rag = RagSettings.load(args.config).with_overrides(data_dir=args.data_dir)
    key = rag.api_key.get_secret_value() if rag.api_key is not None else None
    if args.url is not None:
        client = ServiceClient(args.url, key)
        if not client.reachable():
            raise RemoteError(f"no service answers at {client.url}")
        found = "--url"
    else:
        url = running_service(rag.data_dir)
        announced = None if url is None else ServiceClient(url, key)
        if announced is None or not announced.reachable():
            if args.verbose:
                print(f"rag-llm: no service runs on {rag.data_dir}; using the store directly",
                      file=sys.stderr)
            return None
        client, found = announced, f"announced in {rag.data_dir}"
    if args.verbose:
        print(f"rag-llm: sending the command to the service at {client.url} ({found})",
              file=sys.stderr)
    return client


def _shown(source: str) -> str:
    """``source`` relative to the working directory when it lies under it."""
    try:
        return str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        return source


async def _ingest(service: RagService, paths: Sequence[str], out: TextIO) -> IngestReport:
    bar: Any = None

    def on_total(total: int) -> None:
        nonlocal bar
        if not total or not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:  # the bar is a nicety; ingestion works without it
            return
        bar = tqdm(total=total, unit="chunk", desc="embedding", file=sys.stderr)

    def progress(done: int) -> None:
        if bar is not None:
            bar.update(done)

    try:
        report = await service.ingest_paths(paths, progress, on_total)
    finally:
        if bar is not None:
            bar.close()
    for document in report.documents:
        print(f"{document.status:<10} {document.id}  {document.chunks:>5} chunks  "
              f"{_shown(document.source)}", file=out)
    for failure in report.failures:
        print(f"{'failed':<10} {_shown(failure.source)}: {failure.error}", file=out)
    print(f"{len(report.documents)} documents ({report.count('added')} added, "
          f"{report.count('updated')} updated, {report.count('unchanged')} unchanged), "
          f"{len(report.failures)} failed, {report.chunks_stored} chunks stored", file=out)
    if report.reembedded:
        print(f"{report.reembedded} stored chunks embedded again with {service.embedding_model}"
              " (the store's embedding model changed)", file=out)
    return report


def _run_ingest(args: argparse.Namespace) -> int:
    with _service(args) as (_, service):
        report = asyncio.run(_ingest(service, args.paths, sys.stdout))
    return 1 if report.failures else 0


def _run_documents(args: argparse.Namespace) -> int:
    client = _remote(args)
    if client is not None:
        documents = client.documents()
    else:
        with _service(args) as (_, service):
            documents = [asdict(d) for d in asyncio.run(service.documents())]
    if args.json:
        print(json.dumps(documents, indent=2))
        return 0
    if not documents:
        print("no documents; add some with: rag-llm ingest PATH...")
    for d in documents:
        print(f"{d['id']}  {d['chunks']:>5} chunks  {d['ingested_at']}  {_shown(d['source'])}")
    return 0


def _run_delete(args: argparse.Namespace) -> int:
    client = _remote(args)
    if client is not None:
        deleted = client.delete(args.id)
    else:
        with _service(args) as (_, service):
            deleted = asyncio.run(service.delete(args.id))
    print(f"deleted {args.id}" if deleted else f"no document with id {args.id}",
          file=sys.stdout if deleted else sys.stderr)
    return 0 if deleted else 1


def _store_at(rag: RagSettings, where: str) -> RagSettings:
    """Settings for the store at ``where``: a store URL or name, else an SQLite directory."""
    from rag_llm.rag.stores import STORES, store_scheme

    if store_scheme(where) is not None or where in STORES:
        return rag.with_overrides(store=where)
    return rag.with_overrides(store="sqlite", data_dir=Path(where))


def _run_migrate_store(args: argparse.Namespace) -> int:
    from rag_llm.rag.migrate import copy_store
    from rag_llm.rag.stores import open_store

    _, rag = _settings(args)
    source_settings = rag if args.source is None else _store_at(rag, args.source)
    with contextlib.closing(open_store(source_settings)) as source, \
            contextlib.closing(open_store(_store_at(rag, args.target))) as target:
        total = len(source.documents())
        bar: Any = None
        if total and sys.stderr.isatty():
            with contextlib.suppress(ImportError):  # the bar is a nicety
                from tqdm import tqdm

                bar = tqdm(total=total, unit="doc", desc="copying", file=sys.stderr)
        try:
            report = copy_store(source, target, None if bar is None else lambda _: bar.update())
        finally:
            if bar is not None:
                bar.close()
    print(f"{report.copied} documents copied ({report.chunks} chunks), "
          f"{report.skipped} already there")
    return 0


def _where(args: argparse.Namespace) -> SearchFilter | None:
    """The search filter of ``--document`` and ``--source-prefix``, if either is given."""
    if args.documents is None and args.source_prefix is None:
        return None  # and the query sent to a service imports none of the RAG package
    from rag_llm.rag.store import SearchFilter

    return SearchFilter.of(args.documents, args.source_prefix)


async def _query(service: RagService, args: argparse.Namespace) -> None:
    if args.json:
        answer = await service.query(args.question, args.top_k, _where(args))
        print(json.dumps(asdict(answer), indent=2))
        return
    events = service.stream(args.question, args.top_k, _where(args))
    _print_answer(args, [(event.kind, event.data) async for event in _echoed(args, events)])


async def _echoed(args: argparse.Namespace,
                  events: AsyncIterator[AnswerEvent]) -> AsyncIterator[AnswerEvent]:
    """``events``, printing each text delta as it arrives under ``--stream``."""
    async for event in events:
        if event.kind == "delta" and args.stream:
            print(event.data, end="", flush=True)
        yield event


def _query_remote(client: ServiceClient, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(client.answer(args.question, args.top_k, _where(args)), indent=2))
        return
    events: list[tuple[str, Any]] = []
    for kind, data in client.events(args.question, args.top_k, _where(args)):
        if kind == "error":
            from rag_llm.remote import RemoteError

            raise RemoteError(f"the service's answer failed: {data.get('detail')}")
        if kind == "delta":
            data = data["text"]
            if args.stream:
                print(data, end="", flush=True)
        events.append((kind, data))
    _print_answer(args, events)


def _print_answer(args: argparse.Namespace, events: list[tuple[str, Any]]) -> None:
    citations: list[dict[str, Any]] = []
    text: list[str] = []
    for kind, data in events:
        if kind == "citations":
            citations = data
        elif kind == "delta" and not args.stream:
            text.append(data)
    print("".join(text), end="\n\n")
    if citations:
        print("Sources:")
    for c in citations:
        print(f"[{c['number']}] {c['score']:.3f}  {_shown(c['source'])} "
              f"(chunk {c['chunk_index']}, document {c['document_id']})")


def _run_query(args: argparse.Namespace) -> int:
    if not args.question.strip():
        print("rag-llm: error: the question is empty", file=sys.stderr)
        return 2
    client = _remote(args)
    if client is not None:
        _query_remote(client, args)
        return 0
    with _service(args) as (_, service):
        asyncio.run(_query(service, args))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from rag_llm.api import create_app
    except ImportError:
        raise _MissingExtraError("needs the server extra: pip install 'rag-llm[server]'") from None
    from rag_llm import _malloc
    from rag_llm.locator import ServiceLocator

    _malloc.one_arena()  # before any thread: what the model's batches free goes back whole
    settings, rag = _settings(args)
    locator = ServiceLocator(settings)
    try:
        locator.build_all()
    except BaseException:
        if locator.providers():  # close what was built before the bad one
            asyncio.run(locator.cleanup())
        raise
    if args.ingest:
        from rag_llm.rag import RagService

        with RagService.from_locator(locator, rag) as service:
            asyncio.run(_ingest(service, args.ingest, sys.stderr))
    if args.workers > 1:
        return _serve_workers(args, locator, rag.data_dir)
    from rag_llm.remote import announced

    print(f"rag-llm: serving on http://{args.host}:{args.port} (API docs at /docs)",
          file=sys.stderr)
    with announced(rag.data_dir, args.host, args.port):
        uvicorn.run(create_app(locator, rag_settings=rag), host=args.host, port=args.port,
                    log_level=settings.log_level,
                    timeout_graceful_shutdown=_graceful_shutdown(locator))
    return 0


def _graceful_shutdown(locator: ServiceLocator) -> int:
    """How long uvicorn lets requests in flight run after SIGTERM before it cancels them.

    Without a bound uvicorn waits for every open stream to end before the lifespan closes
    the pools; with one, the service shuts down in about twice the providers'
    ``drain_timeout`` at most (requests, then the providers' own drain), in whole seconds
    as uvicorn takes them.
    """
    return math.ceil(locator.drain_timeout)


def _shared_state(locator: ServiceLocator) -> bool:
    """Whether the providers share their limits through a state store (``[state] url``,
    ``$RAG_LLM_STATE__URL`` or a provider's own ``state``)."""
    return any(getattr(getattr(provider, "config", None), "state", None) is not None
               for provider in locator.providers().values())


def _serve_workers(args: argparse.Namespace, locator: ServiceLocator,
                   data_dir: Path) -> int:
    """``serve --workers N``: N uvicorn workers, each building its own providers from the
    same configuration (:func:`rag_llm.api.create_app_from_environment`)."""
    import uvicorn

    from rag_llm.config import ENV_PREFIX
    from rag_llm.observability.events import get_logger
    from rag_llm.workers import worker_dir

    limits = [f"max_connections={provider.max_connections} ({kind})"
              for kind, provider in locator.providers().items()
              if isinstance(getattr(provider, "max_connections", None), int)]
    if limits and not _shared_state(locator):
        get_logger().warning(
            "limits_per_worker", workers=args.workers,
            message=f"limits hold per worker: {args.workers} workers each allow "
                    f"{', '.join(limits)}; configure [state] url for shared limits")
    # The workers build their own; the parent's were for checking and ingesting.
    log_level = locator.settings.log_level
    grace = _graceful_shutdown(locator)
    asyncio.run(locator.cleanup())
    passed = {f"{ENV_PREFIX}CONFIG": args.config and str(Path(args.config).resolve()),
              f"{ENV_PREFIX}DATA_DIR": args.data_dir and str(args.data_dir.resolve())}
    before = {name: os.environ.get(name) for name in passed}
    os.environ.update({name: value for name, value in passed.items() if value})
    print(f"rag-llm: serving on http://{args.host}:{args.port} with {args.workers} workers "
          "(API docs at /docs)", file=sys.stderr)
    from rag_llm.remote import announced

    try:
        with worker_dir(), announced(data_dir, args.host, args.port):
            uvicorn.run("rag_llm.api:create_app_from_environment", factory=True,
                        workers=args.workers, host=args.host, port=args.port,
                        log_level=log_level, timeout_graceful_shutdown=grace)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def _rag_entries(args: argparse.Namespace, rag: RagSettings) -> list[tuple[str, object, str]]:
    """The ``[rag]`` settings with where each came from: flag, environment, file or default."""
    from dataclasses import fields

    from rag_llm.config import ENV_PREFIX, read_config_file

    path = args.config or os.environ.get(f"{ENV_PREFIX}CONFIG")
    table = read_config_file(Path(path)).get("rag", {}) if path else {}
    entries = []
    for item in fields(rag):
        variable = f"{ENV_PREFIX}{item.name.upper()}"
        if item.name == "data_dir" and args.data_dir is not None:
            source = "command line --data-dir"
        elif variable in os.environ:
            source = f"environment {variable}"
        elif item.name in table:
            source = f"file {path}"
        else:
            source = "default"
        value = getattr(rag, item.name)
        entries.append((item.name, str(value) if isinstance(value, Path) else value, source))
    return entries


def _run_config_check(args: argparse.Namespace) -> int:
    """Build every configured provider, then print the effective configuration."""
    from rag_llm.config import ProviderConfig
    from rag_llm.config._report import provider_entries, render
    from rag_llm.locator import ServiceLocator

    settings, rag = _settings(args)
    locator = ServiceLocator(settings)
    try:
        tables = []
        for kind, provider in locator.build_all().items():
            config = getattr(provider, "config", None)
            if isinstance(config, ProviderConfig):
                values = provider_entries(config)
            else:  # an in-process provider: the settings it was built from
                values = {key: getattr(provider, key, value)
                          for key, value in settings.providers[kind].items()}
                values.update({key: getattr(provider, key) for key in
                               ("model", "device", "batch_size") if hasattr(provider, key)})
            tables.append((f"providers.{kind}", [(key, value, settings.source(kind, key))
                                                 for key, value in values.items()]))
        tables.append(("rag", _rag_entries(args, rag)))
        print(render(tables), end="")
    finally:
        asyncio.run(locator.cleanup())
    print("rag-llm: configuration is valid", file=sys.stderr)
    return 0


def _run_top(args: argparse.Namespace) -> int:
    from rag_llm.observability.top import run_top

    return run_top(args.url, interval=args.interval)


def _run_bench(options: Sequence[str]) -> int:
    """``python -m benchmarks`` with ``options``: the suite lives in the source checkout."""
    import subprocess

    if not Path("benchmarks/__main__.py").is_file():
        print("rag-llm bench runs the suite in benchmarks/ of a source checkout: run it from "
              "the repository root (see benchmarks/README.md)", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "benchmarks", *options]
    return subprocess.call(command)  # noqa: S603 - this Python, the caller's own options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML or YAML config file (default: $RAG_LLM_CONFIG)")
    common.add_argument("--data-dir", type=Path,
                        help="where the store lives (default: $RAG_LLM_DATA_DIR or ./.rag-llm)")
    # Commands that a running service can do for them, faster than opening the store.
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", help="send the command to the service at URL (default: the "
                                      "one serving this data directory, if any)")
    remote.add_argument("--verbose", action="store_true",
                        help="say whether a running service does the work")
    parser = argparse.ArgumentParser(
        prog="rag-llm", description="Answer questions from your documents: ingest, list, "
                                    "delete and query them, or serve the HTTP API.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ingest", nargs="+", metavar="PATH",
                       help="ingest these files and folders before serving")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="worker processes (default 1); /metrics, /health and the "
                            "dashboard add up all of them")
    serve.set_defaults(run=_run_serve)

    ingest = commands.add_parser("ingest", parents=[common],
                                 help="add or update files and folders in the store")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.set_defaults(run=_run_ingest)

    documents = commands.add_parser("documents", parents=[common, remote],
                                    help="list stored documents")
    documents.add_argument("--json", action="store_true", help="print JSON")
    documents.set_defaults(run=_run_documents)

    delete = commands.add_parser("delete", parents=[common, remote],
                                 help="remove a document and its chunks")
    delete.add_argument("id", help="the document id, as `rag-llm documents` shows it")
    delete.set_defaults(run=_run_delete)

    migrate = commands.add_parser(
        "migrate-store", parents=[common],
        help="copy every document, chunk and vector of one store into another; run it "
             "again to resume")
    migrate.add_argument("--from", dest="source", metavar="STORE",
                         help="a store URL or an SQLite store's directory (default: the "
                              "configured store)")
    migrate.add_argument("--to", dest="target", metavar="STORE", required=True,
                         help="a store URL (postgresql://...) or an SQLite store's directory")
    migrate.set_defaults(run=_run_migrate_store)

    query = commands.add_parser("query", parents=[common, remote],
                                help="answer a question from the stored documents")
    query.add_argument("question")
    query.add_argument("--top-k", type=_positive, default=None,
                       help="chunks to retrieve (default 5)")
    query.add_argument("--document", dest="documents", action="append", metavar="ID",
                       help="search only this document (repeatable; ids as `documents` "
                            "lists them)")
    query.add_argument("--source-prefix", metavar="PREFIX",
                       help="search only documents whose source starts with PREFIX")
    query.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    query.add_argument("--json", action="store_true", help="print the answer as JSON")
    query.set_defaults(run=_run_query)

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", parents=[common], help="build every provider and print the effective "
                                        "configuration, secrets masked, with each value's source")
    check.set_defaults(run=_run_config_check)

    top = commands.add_parser("top", help="watch a running service's connection pools live")
    top.add_argument("--url", default="http://127.0.0.1:8000",
                     help="the service (default http://127.0.0.1:8000)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    top.set_defaults(run=_run_top)

    # Listed for --help; main() hands everything after "bench" to the suite untouched.
    commands.add_parser("bench", help="run the benchmark suite from a source checkout; "
                                      "options go to python -m benchmarks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _run_bench(argv[1:])
    args = _parser().parse_args(argv)
    from rag_llm.errors import ConfigError, RagLLMError

    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"rag-llm: configuration error: {exc}", file=sys.stderr)
        return 1
    except _MissingExtraError as exc:
        print(f"rag-llm {args.command} {exc}", file=sys.stderr)
        return 2
    except RagLLMError as exc:
        print(f"rag-llm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
