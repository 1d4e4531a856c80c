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
import time
from multiprocessing.context import ForkServerContext
from pathlib import Path

import crashkit
import pytest

pytestmark = pytest.mark.reliability

KILLS = 50
SEED = 20261203
# What the forkserver imports once, so that each child starts in milliseconds. (Python
# 3.11's forkserver imports these before it sees the test's sys.path: installed modules.)
PRELOAD = ["numpy", "rag_llm.rag", "rag_llm.rag.sqlite_store"]


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
    _, clean_b = _ingest_in_child(forkserver, tmp_path / "ref-b", corpus, progress, None)
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
