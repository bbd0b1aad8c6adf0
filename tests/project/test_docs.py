"""The docs match the code: settings, defaults, routes, the folder picture and every source path they name."""

from __future__ import annotations

import re
from pathlib import Path

from support import REPO

from worker_app_fastwan.core.settings import Settings

ROOT = REPO


def test_every_setting_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`{name}`" not in readme]
    assert not missing, f"document these settings in README.md: {missing}"


def test_readme_first_screen_has_the_two_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:12])
    assert "make demo" in first_screen and "make test" in first_screen


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_documented_defaults_match_the_code():
    """Rows `| `NAME` | `default` | …` in the README show the real default (the deploy guide shows only
    what the image sets; tests/process/test_entrypoint.py holds that to the Dockerfile)."""
    import re

    defaults = {name: field.default for name, field in Settings.model_fields.items() if field.default_factory is None}
    wrong = []
    rows = []  # a row may name several: | `PORT`, `HOST` | `8000`, `0.0.0.0` | …
    for names, cell in re.findall(
        r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \| ([^|]*) \|", (ROOT / "README.md").read_text(), re.M
    ):
        names, shown = re.findall(r"`([^`]*)`", names), re.findall(r"`([^`]*)`", cell)
        rows += zip(names, shown, strict=True) if len(names) == len(shown) else []
    assert len(rows) > 25
    for name, shown in rows:
        if name in defaults and defaults[name] is not None and _shown(defaults[name]) != shown:
            wrong.append(f"README.md: {name} shows {shown!r}, the code says {_shown(defaults[name])!r}")
    assert not wrong, wrong


def _tracked_files() -> list[Path]:
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_nothing_points_outside_the_repo_for_the_contract():
    """A clone alone must be complete: the contract is docs/protocol.md, never a sibling folder's file."""
    # The sibling folder's names, each written in two pieces so that this guard does not find itself.
    outside = ("../" + "shared", "shared/" + "notes", "orchestrator" + "-protocol.md")
    hits = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        hits += [f"{path.relative_to(ROOT)}: {word}" for word in outside if word in text]
    assert not hits, hits


def test_protocol_doc_names_every_worker_route_of_the_stub():
    from orchestrator_stub import internal_api

    doc = (ROOT / "docs" / "protocol.md").read_text()
    router = internal_api.build_router(store=None, rules=None)  # type: ignore[arg-type]  # routes only, never called
    paths = {route.path for route in router.routes}  # type: ignore[attr-defined]
    assert len(paths) == 4
    missing = [path for path in paths if path not in doc]
    assert not missing, f"docs/protocol.md does not describe {missing}"
    assert "v1.1" in doc and "`attempt`" in doc and "`job_ids`" in doc
    assert (
        "v1.2" in doc and "`attempt_secret`" in doc and "`wants_attempt_secret`" in doc and "`attempt_secrets`" in doc
    )
    assert "docs/protocol.md" in (ROOT / "README.md").read_text()


def test_every_stub_setting_is_in_the_stub_readme():
    from orchestrator_stub.settings import StubSettings

    readme = (ROOT / "orchestrator_stub" / "README.md").read_text()
    missing = [name for name in StubSettings.model_fields if f"`{name}`" not in readme]
    assert not missing, f"document these settings in orchestrator_stub/README.md: {missing}"
    assert "X-Stub-Signature" in readme and "HMAC-SHA256" in readme, "receivers must learn how to check webhooks"


def _picture() -> str:
    """The folder picture: the first fenced block of docs/architecture.md."""
    return (ROOT / "docs" / "architecture.md").read_text().split("```")[1]


def test_the_architecture_picture_names_every_package_and_module() -> None:
    """docs/architecture.md is the map of the code: a module it does not name is a module nobody can find."""
    picture = _picture()
    missing = []
    for package in ("worker_app_fastwan", "orchestrator_stub"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT / package)
            if path.name in ("__init__.py", "__main__.py"):
                if path.parent != ROOT / package and f"{path.parent.name}/" not in picture:
                    missing.append(f"{package}/{rel.parent}/")  # a package is drawn as its folder
            elif not re.search(rf"\b{path.stem}\b", picture):
                missing.append(f"{package}/{rel}")
    assert not missing, f"draw these in docs/architecture.md's folder picture: {missing}"


# A path to a source file in the docs: worker_app_fastwan/x/y.py, tests/…/test_x.py, or one relative to the
# worker's package (`buffer/slot.py`), as the docs write them.
SOURCE_PATH = re.compile(r"(?<![\w./-])((?:[a-z_]+/)+[a-z_0-9]+\.py)\b")
DOCS = ("README.md", "docs/architecture.md", "docs/deploy.md", "docs/protocol.md", "RELIABILITY.md", "BENCHMARKS.md")


def test_every_source_path_in_the_docs_exists() -> None:
    """A doc that names a file the code no longer has sends its reader nowhere (a move, a rename, a merge)."""
    roots = (ROOT, ROOT / "worker_app_fastwan", ROOT / "orchestrator_stub", ROOT / "tests")
    stale = []
    for doc in (*DOCS, "orchestrator_stub/README.md"):
        for path in SOURCE_PATH.findall((ROOT / doc).read_text()):
            if not any((root / path).is_file() for root in roots):
                stale.append(f"{doc}: {path}")
    assert not stale, stale


def test_the_stale_path_check_sees_one() -> None:
    assert SOURCE_PATH.findall("see `buffer/slot.py` and worker_app_fastwan/job/runner.py, not x.py") == [
        "buffer/slot.py",
        "worker_app_fastwan/job/runner.py",
    ]


def test_the_readme_layout_names_every_package_of_the_worker() -> None:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    packages = [p.name for p in sorted((ROOT / "worker_app_fastwan").iterdir()) if (p / "__init__.py").is_file()]
    assert len(packages) >= 10
    missing = [name for name in packages if f"{name}/" not in layout]
    assert not missing, f"README.md's Layout does not show {missing}"
