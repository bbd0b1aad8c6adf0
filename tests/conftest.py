"""Shared fixtures. Test helpers live in importable modules beside this file (helpers_*.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_backend():
    """One in-process tiny backend for the tests that drive the pipeline directly."""
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    backend = TinyBackend()
    backend.load()
    return backend
