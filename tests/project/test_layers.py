"""The layer rules, in one table, held by a test: which package of the worker may import which.

Imports only go down: each row of MAY_IMPORT names only rows above it, so the packages stack as
docs/architecture.md draws them. Every import counts (lazy ones inside functions, type-only ones), since each
is an edge the next change may start using. A package that is not in the table fails too: place it first.
"""

from __future__ import annotations

from pathlib import Path

from support import REPO
from support.imports import imports, modules

WORKER = "worker_app_fastwan"
STUB = "orchestrator_stub"

# Bottom to top. A package (or top-level module) may import its own modules and the packages its row names.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),  # settings, schema, protocol, errors, logs, ...: what every layer shares
    "edge": {"core"},  # what strangers send in, checked
    "model": {"core"},  # the weights and their fit, without torch
    "orchestrator": {"core"},  # the orchestrator's client and progress reports
    "pipelines": {"core", "model"},  # never gpu_child: the backends know nothing of the process they run in
    "gpu_child": {"core", "model", "pipelines"},
    # the miniature's world, measurements and training: for tests, benchmarks and scripts only. The tiny
    # backend reads its weights folder, never its code, so no process of the worker imports it.
    "miniature": {"core", "pipelines"},
    "job": {"core", "edge", "model", "gpu_child"},
    "buffer": {"core", "orchestrator", "job"},
    "queue_mode": {"core", "edge", "orchestrator", "job"},
    "doctor": {"core", "model", "gpu_child", "job"},
    "cli": {"core", "edge", "model", "job", "buffer", "queue_mode", "doctor"},
    "__main__": {"cli"},
    "__init__": set(),  # worker_app_fastwan/__init__.py
    STUB: {"core", "edge"},  # another program: it shares the contract (core) and the checks at the edge only
}


def unit(module: str) -> str:
    """The row of the table a module belongs to: its package (or top-level module) in the worker, or the stub."""
    parts = module.split(".")
    if parts[0] == STUB:
        return STUB
    return parts[1] if len(parts) > 1 else "__init__"


def forbidden(root: Path) -> list[str]:
    """Every import against the table, as `path:line: ...`, in file and line order."""
    known = modules(root)
    found = []
    for name, path in known.items():
        importer = unit(name)
        allowed = MAY_IMPORT.get(importer)
        for imp in imports(path, known):
            target = unit(imp.module)
            if target == importer or (allowed is not None and target in allowed):
                continue
            where = f"{path.relative_to(root).as_posix()}:{imp.line}"
            if allowed is None:
                found.append(f"{where}: {importer} is not in the layer table (tests/project/test_layers.py)")
            else:
                may = ", ".join(sorted(allowed)) or "nothing else of the worker"
                found.append(f"{where}: {importer} imports {imp.module} ({target}); {importer} may import: {may}")
    return sorted(found, key=lambda line: (line.split(":")[0], int(line.split(":")[1])))


def test_every_import_follows_the_layer_table() -> None:
    bad = forbidden(REPO)
    assert not bad, f"first forbidden import: {bad[0]}" + (f" (and {len(bad) - 1} more: {bad[1:]})" if bad[1:] else "")


def test_every_package_of_the_worker_has_a_row() -> None:
    rows = {unit(name) for name in modules(REPO)}
    assert rows - set(MAY_IMPORT) == set(), "add the new package to MAY_IMPORT, below what it imports"


def test_the_table_only_goes_down_and_keeps_the_named_rules() -> None:
    order = list(MAY_IMPORT)
    for n, (row, allowed) in enumerate(MAY_IMPORT.items()):
        assert allowed <= set(order[:n]), f"{row} may import {allowed - set(order[:n])}, which is not below it"
    assert MAY_IMPORT["core"] == set()
    assert [row for row, allowed in MAY_IMPORT.items() if "cli" in allowed] == ["__main__"]
    assert "gpu_child" not in MAY_IMPORT["pipelines"]
    assert MAY_IMPORT[STUB] <= {"core", "edge"}


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {f"{WORKER}/__init__.py": "", f"{STUB}/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_layer_check_finds_a_forbidden_import_with_its_line(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            f"{WORKER}/core/__init__.py": "",
            f"{WORKER}/core/schema.py": "X = 1\n",
            f"{WORKER}/cli/__init__.py": "",
            f"{WORKER}/cli/main.py": "from worker_app_fastwan.core.schema import X\n",  # down: allowed
            f"{WORKER}/core/settings.py": '"""Doc."""\n\n\ndef f():\n    from worker_app_fastwan.cli import main\n',
            f"{WORKER}/job/__init__.py": "",
            f"{STUB}/app.py": "import os\nimport worker_app_fastwan.job\n",
            f"{WORKER}/newpkg/__init__.py": "from worker_app_fastwan.core import schema\n",
        },
    )
    assert forbidden(root) == [
        "orchestrator_stub/app.py:2: orchestrator_stub imports worker_app_fastwan.job (job);"
        " orchestrator_stub may import: core, edge",
        "worker_app_fastwan/core/settings.py:5: core imports worker_app_fastwan.cli.main (cli);"
        " core may import: nothing else of the worker",
        "worker_app_fastwan/newpkg/__init__.py:1: newpkg is not in the layer table (tests/project/test_layers.py)",
    ]
