"""The package's shape: no import cycles between its top-level parts, no oversized file."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "rag_llm"
MAX_LINES = 600


def _part(module: str) -> str | None:
    """The top-level module or package ``module`` belongs to (``rag_llm.calls``, say)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "rag_llm" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Every rag_llm module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "rag_llm":  # from rag_llm import errors: that submodule
                found.update(f"rag_llm.{alias.name}" for alias in node.names
                             if (SRC / alias.name).exists() or (SRC / f"{alias.name}.py").exists())
            else:
                found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        module = ".".join(("rag_llm", *path.relative_to(SRC).with_suffix("").parts))
        source = _part(module.removesuffix(".__init__"))
        if source is None:
            continue
        for imported in _imports(path):
            target = _part(imported)
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected parts of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_top_level_parts() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_source_file_is_over_600_lines() -> None:
    sizes = {path.relative_to(SRC).as_posix(): len(path.read_text().splitlines())
             for path in SRC.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
