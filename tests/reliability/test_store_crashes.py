"""Crash consistency of the SQLite store: each scenario held to a criterion in numbers.

| scenario                                  | criterion                                          |
|-------------------------------------------|----------------------------------------------------|
| SIGKILL at a random point of an ingest,   | after each kill the reopened store holds every     |
| 25 times into an empty store, 25 times    | document whole (metadata, each chunk, each chunk's |
| replacing version A by version B          | vector) or absent (version A where it was not      |
|                                           | replaced); it holds exactly the documents whose    |
|                                           | write the child finished; a re-ingest makes it     |
|                                           | equal to a clean ingest                            |
| ``rag-llm ingest`` and ``rag-llm serve``'s | both succeed; every document of both is whole;     |
| uploads into one data directory at once   | SQLite's integrity check passes                    |
| a full disk (2 MiB tmpfs, or a file size  | ``rag-llm ingest`` exits 1 with one line naming    |
| limit)                                    | the document and the data directory, no traceback; |
|                                           | the store opens with its earlier documents whole;  |
|                                           | with space again, a re-ingest finishes             |
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from pathlib import Path

import crashkit
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support import closed_port, provider_config

from rag_llm.api import create_app
from rag_llm.cli import main
from rag_llm.config import Settings
from rag_llm.locator import ServiceLocator
from rag_llm.rag import RagSettings
from rag_llm.rag.sqlite_store import SQLiteStore
from rag_llm.testing import UpstreamServer

pytestmark = pytest.mark.reliability

KILLS = 50
SEED = 20261203
# What the forkserver imports once, so that each child starts in milliseconds. (Python
# 3.11's forkserver imports these before it sees the test's sys.path: installed modules.)
PRELOAD = ["numpy", "rag_llm.rag", "rag_llm.rag.sqlite_store"]
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"
SMALL_DISK = "2m"
SMALL_BYTES = 2 * 1024 * 1024
BIG_FILES, BIG_LINES = 30, 600


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _ingest_in_child(context: ForkServerContext, data_dir: Path, corpus: Path,
                     progress: Path, kill_after: float | None) -> tuple[bool, float]:
    """Ingest in a forked child, SIGKILLed ``kill_after`` seconds after its first document's
    write began (None: let it finish); whether it was killed, and how long it wrote."""
    writing, writing_w = context.Pipe(duplex=False)
    child = context.Process(target=crashkit.ingest_until_killed,
                            args=(data_dir, corpus, writing_w, progress))
    child.start()
    writing_w.close()
    try:
        assert writing.poll(30), "the child wrote nothing"
        writing.recv_bytes()
        began = time.perf_counter()
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):  # it finished first
                os.kill(child.pid or 0, signal.SIGKILL)
        child.join(30)
        wrote = time.perf_counter() - began
        assert child.exitcode in (0, -signal.SIGKILL), child.exitcode
        return child.exitcode == -signal.SIGKILL, wrote
    finally:
        writing.close()
        child.close()


def test_kills_mid_ingest_leave_each_document_whole_or_absent(
    forkserver: ForkServerContext, tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    corpus, progress = tmp_path / "corpus", tmp_path / "progress"
    started = time.perf_counter()
    crashkit.write_corpus(corpus, "A")
    _, clean_a = _ingest_in_child(forkserver, tmp_path / "ref-a", corpus, progress, None)
    expected = crashkit.versions_in(tmp_path / "ref-a", "A")
    assert len(expected) == crashkit.DOCUMENTS
    figures: list[tuple[str, float, bool, int, bool, dict[str, int]]] = []

    def kill(phase: str, data_dir: Path, clean: float) -> None:
        # Uniform over the span a clean run spends writing (reading and chunking come
        # first and write nothing): a few kills land after the run, under load.
        delay = rng.uniform(0.0, clean)
        killed, _ = _ingest_in_child(forkserver, data_dir, corpus, progress, delay)
        stored, inside = crashkit.progress_of(progress)
        counts = crashkit.census(data_dir, expected)
        new = counts.get("A" if phase == "empty" else "B", 0)
        # Exactly the writes the child finished are there; one caught at its commit may be.
        assert new == stored or (inside and new == stored + 1), (stored, inside, counts)
        figures.append((phase, delay, killed, stored, inside, counts))

    for n in range(KILLS // 2):
        kill("empty", tmp_path / f"empty-{n}", clean_a)
    reingest = time.perf_counter()
    for n in range(KILLS // 2):  # a re-ingest finishes each killed run
        crashkit.ingest(tmp_path / f"empty-{n}", corpus)
        crashkit.same_documents(tmp_path / f"empty-{n}", tmp_path / "ref-a")
    reingest = time.perf_counter() - reingest

    crashkit.write_corpus(corpus, "B")
    _ingest_in_child(forkserver, tmp_path / "ref-b", corpus, progress, None)
    shutil.copytree(tmp_path / "ref-a", tmp_path / "replace-clean")  # the span of a replace
    _, clean_b = _ingest_in_child(forkserver, tmp_path / "replace-clean", corpus, progress,
                                  None)
    crashkit.same_documents(tmp_path / "replace-clean", tmp_path / "ref-b")
    versions_b = crashkit.versions_in(tmp_path / "ref-b", "B")
    for source, version in versions_b.items():
        expected[source].update(version)
    for n in range(KILLS - KILLS // 2):
        shutil.copytree(tmp_path / "ref-a", tmp_path / f"replace-{n}")
        kill("replace", tmp_path / f"replace-{n}", clean_b)
    again = time.perf_counter()
    for n in range(KILLS - KILLS // 2):
        crashkit.ingest(tmp_path / f"replace-{n}", corpus)
        crashkit.same_documents(tmp_path / f"replace-{n}", tmp_path / "ref-b")
    reingest += time.perf_counter() - again
    took = time.perf_counter() - started

    mid = [f for f in figures if f[2] and (f[3] < crashkit.DOCUMENTS or f[4])]
    inside = [f for f in figures if f[4]]
    print(f"\n{KILLS} kills in {took:.1f} s, re-ingests {reingest:.1f} s of it (clean runs "
          f"{clean_a:.3f} / {clean_b:.3f} s): {len(mid)} before the last document's write "
          f"ended, {len(inside)} inside a write, {sum(1 for f in figures if not f[2])} after "
          "the run finished")
    for phase, delay, killed, stored, in_write, counts in figures:
        print(f"  {phase:<7} kill at {delay * 1000:5.0f} ms: stored {stored:2d}"
              f"{' (in a write)' if in_write else ''}{'' if killed else ' (finished)'} "
              f"{counts}")
    assert len(mid) >= KILLS // 5, "too few kills landed mid-ingest to prove anything"
    assert inside, "no kill landed inside a document's write"


def _config(upstream: UpstreamServer, folder: Path, data_dir: Path) -> Path:
    """A config file: embeddings (and chat) from ``upstream``, small batches, one at a time,
    so that an ingest takes many calls."""
    path = folder / "rag-llm.toml"
    path.write_text(
        f'[providers.embedding]\ntype = "openai"\nmodel = "m"\nbase_url = "{upstream.base_url}"\n'
        f'[providers.llm]\ntype = "openai"\nmodel = "c"\nbase_url = "{upstream.base_url}"\n'
        f'[rag]\ndata_dir = "{data_dir}"\nembed_batch_size = 2\nembed_concurrency = 1\n')
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "OPENAI_"))}


def _whole(data_dir: Path, upstream: UpstreamServer) -> dict[str, int]:
    """Check every stored document is whole (each chunk with the vector its text embeds to)
    and SQLite's integrity check passes; source -> chunks."""
    crashkit.check_files(data_dir, upstream.embedding_dim)
    found = {}
    with SQLiteStore(data_dir) as store:
        for doc in store.documents():
            chunks = store.chunks(doc.id)
            assert len(chunks) == doc.chunks > 0, doc.source
            want = [upstream.expected_embedding(c.text) for c in chunks]
            assert np.allclose(store.vectors(doc.id), want, atol=1e-6), doc.source
            found[doc.source] = doc.chunks
        assert store.chunk_count() == sum(found.values())
    return found


def _app(upstream: UpstreamServer, data_dir: Path) -> FastAPI:
    embedding = provider_config(upstream, model="m")
    locator = ServiceLocator(Settings(providers={"embedding": embedding}))
    return create_app(locator, rag_settings=RagSettings(data_dir=data_dir))


def test_the_command_line_and_the_server_ingest_into_one_data_directory_at_once(
    upstream: UpstreamServer, tmp_path: Path,
) -> None:
    data_dir, corpus = tmp_path / "data", tmp_path / "corpus"
    config = _config(upstream, tmp_path, data_dir)
    crashkit.write_corpus(corpus, "cli")
    upstream.delay = 0.01  # each embedding call: the two writers interleave
    port = closed_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rag_llm.cli", "serve", "--port", str(port), "--config",
         str(config)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    uploads: list[tuple[int, int]] = []  # (status, CLI documents the server saw before it)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/v1/documents")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, server.communicate()
                    assert time.monotonic() < deadline, "the service did not start"
                    time.sleep(0.1)
            cli = subprocess.Popen(
                [sys.executable, "-m", "rag_llm.cli", "ingest", str(corpus), "--config",
                 str(config)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            n = 0
            while cli.poll() is None or n < 3:
                seen = sum(1 for d in client.get("/v1/documents").json()
                           if d["source"].startswith(str(corpus)))
                files = [("files", (f"upload-{n}-{i}.md",
                                    f"# Upload {n}.{i}\n\nSent while the command line "
                                    f"ingests, number {n}.{i}.".encode(), "text/markdown"))
                         for i in range(2)]
                response = client.post("/v1/documents", files=files)
                uploads.append((response.status_code, seen))
                n += 1
            out, err = cli.communicate(timeout=30)
            listed = {d["source"] for d in client.get("/v1/documents").json()}
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert cli.returncode == 0, err
    assert f"{crashkit.DOCUMENTS} documents ({crashkit.DOCUMENTS} added" in out
    assert {status for status, _ in uploads} == {200}
    overlapped = [seen for _, seen in uploads if 0 < seen < crashkit.DOCUMENTS]
    print(f"\n{len(uploads)} uploads of 2 files, {len(overlapped)} of them while the command "
          f"line had stored 1-{crashkit.DOCUMENTS - 1} documents")
    assert overlapped, uploads  # the two really wrote at once
    stored = _whole(data_dir, upstream)
    assert set(stored) == listed
    assert len(stored) == crashkit.DOCUMENTS + 2 * len(uploads)


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory whose files cannot grow past about 2 MiB: a tmpfs mounted there (needs
    root), or a file size limit (RLIMIT_FSIZE) the command line's process runs under."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "file-size-limit":
        yield request.param, folder
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False) \
        if shutil.which("mount") and os.geteuid() == 0 else None
    if mounted is None or mounted.returncode:
        pytest.skip("mounting a tmpfs needs root; the file-size-limit case covers the rest")
    try:
        yield request.param, folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_the_ingest_in_one_line_and_keeps_the_store(
    upstream: UpstreamServer, tmp_path: Path, small_disk: tuple[str, Path],
) -> None:
    kind, disk = small_disk
    data_dir, corpus = disk / "data", tmp_path / "big"
    config = _config(upstream, tmp_path, data_dir)
    config.write_text(config.read_text().replace("embed_batch_size = 2", "embed_batch_size = 64"))
    assert main(["ingest", str(SAMPLES), "--config", str(config)]) == 0
    before = _whole(data_dir, upstream)
    corpus.mkdir()
    for n in range(BIG_FILES):  # 3 MiB of text in all: more than the disk holds
        (corpus / f"big-{n:02d}.txt").write_text(
            "\n\n".join(f"Line {i} of big file {n}: " + "filler words " * 12
                        for i in range(BIG_LINES)))
    command = [sys.executable, "-m", "rag_llm.cli"]
    if kind == "file-size-limit":
        command = [sys.executable, "-c", "import resource, sys; resource.setrlimit("
                   f"resource.RLIMIT_FSIZE, ({SMALL_BYTES}, {SMALL_BYTES})); from rag_llm.cli "
                   "import main; sys.exit(main(sys.argv[1:]))"]
    full = subprocess.run([*command, "ingest", str(corpus), "--config", str(config)],
                          env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert full.returncode == 1, full.stderr
    [line] = full.stderr.splitlines()  # one line: no traceback
    assert line.startswith("rag-llm: error: cannot store '"), line
    assert f"the store in {data_dir} is out of space" in line
    assert "then ingest again" in line

    after = _whole(data_dir, upstream)  # the store opens, every document in it whole
    assert {s: after[s] for s in before} == before
    partial = len(after) - len(before)
    assert partial < BIG_FILES

    if kind == "tmpfs":  # the API says the same, as a 507, while the disk is still full
        big = (corpus / "big-00.txt").read_bytes() * 4
        with TestClient(_app(upstream, data_dir)) as client:
            response = client.post("/v1/documents", files=[("files", ("more.txt", big))])
        assert response.status_code == 507, response.text
        assert response.json()["detail"].startswith(
            f"the document store failed: cannot store 'more.txt': the store in {data_dir} "
            "is out of space")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    assert main(["ingest", str(corpus), "--config", str(config)]) == 0
    finished = _whole(data_dir, upstream)
    assert len(finished) == len(before) + BIG_FILES
    print(f"\n{kind}: {partial} of {BIG_FILES} big files stored before the disk was full; "
          f"{line.replace(str(tmp_path), '$TMP')}")
