"""Tests that start processes of their own: workers, stubs, GPU children, commands, the entrypoint, a browser.

Every test in this folder carries the `process` marker, so `pytest -m "not process"` runs the in-process tests
alone (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.process)
