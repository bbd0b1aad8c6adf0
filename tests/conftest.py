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


# The files that run the longest (worker processes, model loads, waits on real clocks). Side by side, the
# suite ends when its last file does: these start first, and the many short files fill the gaps after.
LONGEST_FIRST = (
    "test_buffer_mode.py",
    "test_slots.py",
    "test_cli.py",
    "test_queue_mode.py",
    "test_doctor.py",
    "test_studio_browser.py",
    "test_runner.py",
    "test_entrypoint.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order inside a file stays


@pytest.fixture(scope="session")
def tiny_backend():
    """One in-process tiny backend for the tests that drive the pipeline directly."""
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    return backend
