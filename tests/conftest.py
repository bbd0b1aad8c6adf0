"""Shared fixtures. Test helpers live in the `support` package beside this file (pyproject's `pythonpath =
["tests"]`); its modules that define fixtures are registered here as plugins, so no test imports a fixture."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["support.databases", "support.stubs", "support.procs"]


def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs test files side by side (pytest-xdist) on a machine of few cores: one torch thread per
    # process (this one and every worker, GPU child or CLI it starts) keeps them from fighting over the cores,
    # where OpenMP's waiting threads would spin. A test that needs another count sets its own.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A run started in the background by a non-interactive shell (`make test &`, some CI agents) inherits
    # SIGINT ignored, and so would every process a test starts: the Ctrl-C tests (the CLI's exit 130, the
    # entrypoint's forwarding) would then fail though the product is right (it keeps an inherited SIG_IGN,
    # as a background job should). A handler here is reset to the default in each child at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if missing := [name for name in LONGEST_FIRST if name != TORCH_GROUP and not (HERE / name).is_file()]:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names files that are gone: {missing}")


# `make test` runs the suite on three xdist workers, each group of tests whole on one worker, the groups in
# the order below. A group is a file, so a module's shared worker process starts once and its tests keep
# their order; the files marked `torch` (they drive torch and diffusers in the test process) make one group,
# so that only one worker pays for importing them (those files import them inside their tests, not when they
# are collected).
TORCH_GROUP = "in-process torch"
# The suite ends when its last group does: the longest (worker processes, model loads, real clocks) start
# first, and the many short files fill the gaps after them. Only an order: a file not named here still runs.
LONGEST_FIRST = (
    "process/test_fleet_workers.py",
    "process/test_buffer_mode.py",
    "process/test_queue_mode.py",
    "process/test_cli.py",
    "process/test_output_targets.py",
    "process/test_doctor.py",
    "process/test_slots.py",
    "process/test_runner.py",
    TORCH_GROUP,
    "process/test_studio_browser.py",
    "process/test_stub_replicas.py",
    "process/test_entrypoint.py",
    "process/test_stub_fleet.py",
)
HERE = Path(__file__).parent


@functools.cache
def _drives_torch(path: str) -> bool:
    """Whether a test file is marked `torch`: read from its text, since xdist's scheduler sees node ids only."""
    file = HERE.parent / path
    return file.is_file() and "pytest.mark.torch" in file.read_text(encoding="utf-8")


def _group(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return TORCH_GROUP if _drives_torch(path) else path.removeprefix("tests/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))  # stable: a file's order stays


@pytest.hookimpl(optionalhook=True)  # a plain `pytest` without xdist runs the same suite, one test after another
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        """xdist's own per-scope scheduler (a scope: all of it on one worker), with our groups as scopes."""

        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    config.option.loadscopereorder = False  # keep the collection order, longest first; xdist's is by test count
    return ByGroup(config, log)


@pytest.fixture(scope="session")
def tiny_backend():
    """One in-process tiny backend for the tests that drive the pipeline directly."""
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    return backend
