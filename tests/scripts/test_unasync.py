"""The generated sync call layer matches its async source, and the rewrite is sound."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "scripts" / "unasync.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["unasync"] = module
    spec.loader.exec_module(module)
    return module


def test_the_generated_sync_code_is_up_to_date() -> None:
    assert _script().main(["--check"]) == 0, "run: python scripts/unasync.py"


def test_a_stale_generated_file_is_reported_then_regenerated(tmp_path: Path) -> None:
    unasync = _script()
    source, target = tmp_path / "src" / "_async", tmp_path / "src" / "_sync"
    source.mkdir(parents=True)
    target.mkdir()
    (source / "m.py").write_text("async def f():\n    return await g()\n")
    hand_edited = "def f():\n    return g()  # hand-edited\n"
    (target / "m.py").write_text(hand_edited)
    unasync.SOURCE, unasync.TARGET, unasync.ROOT = source, target, tmp_path
    assert unasync.main(["--check"]) == 1
    assert (target / "m.py").read_text() == hand_edited
    assert unasync.main([]) == 0
    assert (target / "m.py").read_text().endswith("def f():\n    return g()\n")
    assert unasync.main(["--check"]) == 0


def test_the_rewrite_renames_whole_words_and_realigns_continuations() -> None:
    text = ("from collections.abc import AsyncIterator, Callable\n"
            "async def send(a: int,\n"
            "               b: int) -> AsyncIterator[str]:\n"
            "    async with x.admitted(r) as admission:\n"
            "        line = await anext(lines)\n"
            "    readmitted = await transport.aread()\n")
    out = _script().unasync(text, "m.py").split("\n", 2)[2]
    assert out == ("from collections.abc import Callable, Iterator\n"
                   "def send(a: int,\n"
                   "         b: int) -> Iterator[str]:\n"
                   "    with x.admitted_sync(r) as admission:\n"
                   "        line = next(lines)\n"
                   "    readmitted = transport.read()\n")
