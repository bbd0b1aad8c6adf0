"""The docs match the code: every setting is documented in the README."""

from __future__ import annotations

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


def test_architecture_names_every_module():
    """docs/architecture.md is the map of the code: a module it does not name is a module nobody can find."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for package in ("worker_app_fastwan", "orchestrator_stub"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT / package).as_posix()
            if path.name not in ("__main__.py",) and not (path.name == "__init__.py" and path.parent.name == package):
                if f"`{rel}`" not in doc:
                    missing.append(f"{package}/{rel}")
    assert not missing, f"name these modules in docs/architecture.md: {missing}"
