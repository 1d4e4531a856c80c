"""rag-llm bench hands its options to the benchmark suite of a source checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_llm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bench_passes_its_options_to_the_suite(monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["bench", "--list"]) == 0
    assert "ragllm-auto" in capfd.readouterr().out


def test_bench_outside_a_checkout_says_where_to_run_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 2
    assert "repository root" in capfd.readouterr().err
