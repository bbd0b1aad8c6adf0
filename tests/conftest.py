"""Shared fixtures. Test helpers live in importable modules beside this file (pyproject's `pythonpath =
["tests"]`); the ones that define fixtures are registered here as plugins, so no test imports a fixture."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["stub_fixtures", "helpers_procs"]


def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs test files side by side (pytest-xdist) on a machine of few cores: one torch thread per
    # process (this one and every worker, GPU child or CLI it starts) keeps them from fighting over the cores,
    # where OpenMP's waiting threads would spin. A test that needs another count sets its own.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_backend():
    """One in-process tiny backend for the tests that drive the pipeline directly."""
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    return backend
