"""The code's shape, checked: no import cycle in either package (lazy and type-only imports count too: they
are cycles waiting to happen)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO

PACKAGES = ("worker_app_fastwan", "orchestrator_stub")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in it (a package import means its __init__)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_no_import_cycle_in_either_package() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_can_see_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


MAX_LINES = 300
# Nothing may join this list: a module that outgrows the limit is split along its seams instead (the last
# two, `buffer/slot.py` and `job/runner.py`, were split in issue 12).
KNOWN_OVER: frozenset[str] = frozenset()


def _too_long(lengths: dict[str, int]) -> dict[str, int]:
    return {path: n for path, n in sorted(lengths.items()) if n > MAX_LINES and path not in KNOWN_OVER}


def test_every_module_is_at_most_300_lines() -> None:
    """One job per module: a module over 300 lines is doing more than one, and is split along its seams."""
    lengths = {
        path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in _modules().values()
    }
    assert _too_long(lengths) == {}


def test_the_length_check_can_see_a_long_module() -> None:
    lengths = {"worker_app_fastwan/a.py": MAX_LINES + 1, "worker_app_fastwan/b.py": MAX_LINES}
    assert _too_long(lengths) == {"worker_app_fastwan/a.py": MAX_LINES + 1}
