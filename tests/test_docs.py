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
