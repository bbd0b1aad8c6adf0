"""The docs match the code: every setting is documented in the README."""

from __future__ import annotations

from pathlib import Path

from worker_app_fastwan.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


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
    what the image sets; tests/test_entrypoint.py holds that to the Dockerfile)."""
    import re

    defaults = {name: field.default for name, field in Settings.model_fields.items() if field.default_factory is None}
    wrong = []
    rows = []  # a row may name several: | `PORT`, `HOST` | `8000`, `0.0.0.0` | …
    for names, cell in re.findall(
        r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \| ([^|]*) \|", (ROOT / "README.md").read_text(), re.M
    ):
        names, shown = re.findall(r"`([^`]*)`", names), re.findall(r"`([^`]*)`", cell)
        rows += zip(names, shown) if len(names) == len(shown) else []
    assert len(rows) > 25
    for name, shown in rows:
        if name in defaults and defaults[name] is not None and _shown(defaults[name]) != shown:
            wrong.append(f"README.md: {name} shows {shown!r}, the code says {_shown(defaults[name])!r}")
    assert not wrong, wrong
