"""Shared fixtures. Test helpers live in importable modules beside this file (pyproject's `pythonpath =
["tests"]`); the ones that define fixtures are registered here as plugins, so no test imports a fixture."""

from __future__ import annotations

import pytest

pytest_plugins = ["stub_fixtures", "helpers_procs"]


@pytest.fixture(scope="session")
def tiny_backend():
    """One in-process tiny backend for the tests that drive the pipeline directly."""
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    return backend
