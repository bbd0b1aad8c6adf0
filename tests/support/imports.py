"""The project's import graph, read from the source (nothing is imported): for the layer rules and the shape
checks in tests/project/. Every import counts, lazy and type-only ones too: they are edges waiting to be used."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("worker_app_fastwan", "orchestrator_stub")


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module under `root`'s packages by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the project module imported: `from a.b import c` is a.b.c when c is a module, else a.b


def imports(path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """The project modules `path` imports, anywhere in it, with the line of each import."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for name in dict.fromkeys(names):  # `from a import b, c` of one module: one import
            if name in known:
                yield Import(node.lineno, name)


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    return {name: {i.module for i in imports(path, known)} - {name} for name, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its first node repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(edges.get(node, ())):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(edges):
        found = visit(start, [])
        if found:
            return found
    return None
