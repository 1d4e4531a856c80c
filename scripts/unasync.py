"""Generate the sync call layer from its async source, as httpcore generates ``_sync/``.

    python scripts/unasync.py          # rewrite src/rag_llm/calls/_sync/ from _async/
    python scripts/unasync.py --check  # exit 1 if a generated file is stale (CI runs this)

Each substitution is a whole-word rename; the async source is written so that applying
them gives correct sync code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "rag_llm" / "calls" / "_async"
TARGET = ROOT / "src" / "rag_llm" / "calls" / "_sync"

SUBS = [
    ("await anext(", "next("),
    ("async def ", "def "),
    ("async with ", "with "),
    ("async for ", "for "),
    ("await ", ""),
    ("AsyncIterator", "Iterator"),
    ("AsyncExitStack", "ExitStack"),
    ("AsyncTimer", "Timer"),
    ("StopAsyncIteration", "StopIteration"),
    ("enter_async_context", "enter_context"),
    ("push_async_exit", "push"),
    ("async_transport", "sync_transport"),
    ("aiter_lines", "iter_lines"),
    ("aread", "read"),
    ("admitted", "admitted_sync"),
    ("asynccontextmanager", "contextmanager"),
    ("async_waiter", "sync_waiter"),
    ("atry_acquire", "try_acquire"),
    ("rag_llm.calls._async", "rag_llm.calls._sync"),
    ('"async"', '"sync"'),
]


def _word(old: str) -> re.Pattern[str]:
    """``old`` where it stands as a whole word (or starts with punctuation)."""
    start = r"\b" if old[0].isalnum() or old[0] == "_" else ""
    end = r"\b" if old[-1].isalnum() or old[-1] == "_" else ""
    return re.compile(start + re.escape(old) + end)


PATTERNS = [(_word(old), new) for old, new in SUBS]


def _import_key(name: str) -> tuple[int, str]:
    """isort's order within one import: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def _sorted_import(line: str) -> str:
    match = re.fullmatch(r"(from \S+ import )([\w, ]+)", line)
    if match is None:
        return line
    names = sorted((n.strip() for n in match[2].split(",")), key=_import_key)
    return match[1] + ", ".join(names)


def unasync(text: str, source: str) -> str:
    """The sync module for the async ``text`` of ``source``."""
    lines: list[str] = []
    shift = depth = 0
    for line in text.split("\n"):
        if depth > 0 and shift:  # continuation lines aligned under a shortened opener
            line = line[min(shift, len(line) - len(line.lstrip(" "))):]
        converted = line
        for pattern, new in PATTERNS:
            converted = pattern.sub(new, converted)
        if depth == 0:
            shift = len(line) - len(converted)
        depth += line.count("(") + line.count("[") - line.count(")") - line.count("]")
        depth = max(depth, 0)
        lines.append(_sorted_import(converted))
    header = (f"# Generated from {source} by scripts/unasync.py:\n"
              "# edit that file, then run the script.\n")
    return header + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(SOURCE.glob("*.py")):
        target = TARGET / path.name
        if path.name == "__init__.py":
            continue
        wanted = unasync(path.read_text(encoding="utf-8"),
                         path.relative_to(ROOT / "src").as_posix())
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == wanted:
            continue
        stale.append(target.relative_to(ROOT).as_posix())
        if not args.check:
            target.write_text(wanted, encoding="utf-8")
    if args.check and stale:
        print(f"stale, run python scripts/unasync.py: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
