"""The stub's image installs the project without dependencies, then only pyproject's `stub` extra
(Dockerfile.stub): every third-party module the stub's code can import, and the worker modules it imports
(core/ and edge/), lazily or not, must come with that extra, or the stub image fails on the first request
that needs it (a storage set-up, a metrics scrape) instead of at build time."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib
from support.imports import graph, modules

REPO = Path(__file__).resolve().parents[2]
# Imported inside functions of shared modules that only the worker calls: the stub never reaches them.
WORKER_ONLY = {
    "diffusers": "core/logs.adopt_library_loggers, called by the GPU process",
    "transformers": "core/logs.adopt_library_loggers, called by the GPU process",
    "pynvml": "core/devices: the worker's GPU facts",
}


def _stub_closure() -> set[Path]:
    """The stub's modules and every worker module they import, transitively."""
    known = modules(REPO)
    edges = graph(known)
    todo = [name for name in known if name.startswith("orchestrator_stub")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    return {known[name] for name in seen}


def _third_party(paths: set[Path]) -> dict[str, str]:
    """{top-level module: a file importing it} of every import that is neither the standard library's nor ours."""
    found: dict[str, str] = {}
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("worker_app_fastwan", "orchestrator_stub"):
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _installed_with(extra: list[str]) -> set[str]:
    """The distributions the extra's requirements bring, transitively (as installed here)."""
    todo, seen = [_requirement_name(r) for r in extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo.extend(_requirement_name(r) for r in requires if "extra ==" not in r)
    return seen


def _missing(imported: dict[str, str], provided: set[str]) -> list[str]:
    distributions = md.packages_distributions()
    missing = []
    for module, where in sorted(imported.items()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & provided:
            missing.append(f"{module} (imported by {where}; distribution {', '.join(sorted(names))})")
    return missing


def test_the_stub_extra_brings_everything_the_stub_imports() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    imported = {m: where for m, where in _third_party(_stub_closure()).items() if m not in WORKER_ONLY}
    assert "fastapi" in imported and "boto3" in imported  # the scan sees lazy imports (boto3 is one)
    missing = _missing(imported, _installed_with(extra["stub"]))
    assert not missing, "add to pyproject's `stub` extra (Dockerfile.stub installs only it): " + "; ".join(missing)


def test_the_check_sees_a_missing_distribution() -> None:
    assert _missing({"boto3": "x.py"}, _installed_with(["fastapi"])) == ["boto3 (imported by x.py; distribution boto3)"]
    assert _missing({"starlette": "x.py"}, _installed_with(["fastapi"])) == []  # fastapi brings it
