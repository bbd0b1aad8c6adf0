"""The stub's two databases in the tests: SQLite (a file per stub) and PostgreSQL (a real server, one per test
process, started on first use; a database per stub).

Which backends a test runs on:

- A test (or module, `pytestmark`) marked `@pytest.mark.backends("sqlite", "postgresql")` runs once on each:
  its stub fixtures (`stub`, `stub_factory`, `module_stubs`, `shared_stub`, in support/stubs.py) and
  `store_factory` take the backend as a parameter (`[sqlite]`, `[postgresql]` in the test id).
- Every other test that uses them runs on SQLite, unless STUB_TEST_BACKENDS names more
  (`STUB_TEST_BACKENDS=sqlite,postgresql make test` runs every stub test on both).

    def test_x(store_factory) -> None:       # in-process: a `Store` on a fresh database of the backend
        store = store_factory(lease_seconds=30, max_attempts=3)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.postgres import PostgresServer

BACKENDS = ("sqlite", "postgresql")


def _chosen() -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in os.environ.get("STUB_TEST_BACKENDS", "").split(",") if n.strip())
    if bad := set(names) - set(BACKENDS):
        raise pytest.UsageError(f"STUB_TEST_BACKENDS: unknown backend(s) {sorted(bad)}; known: {BACKENDS}")
    return names or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run the test's stubs and stores on each database named")
    _chosen()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stub_backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    backends = _chosen() or (tuple(marker.args) if marker else ("sqlite",))
    if backends != ("sqlite",):
        metafunc.parametrize("stub_backend", backends, indirect=True, scope="module")


@pytest.fixture(scope="module")
def stub_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for this test process (pytest-xdist: one per worker), stopped by its PID."""
    server = PostgresServer.start()
    yield server
    server.stop()


class Databases:
    """Fresh databases of one backend: a file in `folder` (SQLite) or a new database on the server."""

    def __init__(self, backend: str, folder: Path, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self.folder = folder
        self._request = request
        self._n = 0

    @property
    def server(self) -> PostgresServer:
        return self._request.getfixturevalue("postgres_server")  # type: ignore[no-any-return]

    def fresh(self, name: str | None = None) -> str:
        """A STUB_DB value for an empty database."""
        self._n += 1
        if self.backend == "sqlite":
            self.folder.mkdir(parents=True, exist_ok=True)
            return str(self.folder / f"{name or f'stub{self._n}'}.sqlite3")
        return self.server.url(self.server.create_database(f"t_{uuid.uuid4().hex[:16]}"))


@pytest.fixture
def databases(stub_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Databases:
    return Databases(stub_backend, tmp_path / "db", request)


@pytest.fixture
def store_factory(databases: Databases) -> Iterator[Callable[..., Any]]:
    """`store_factory(**store_kwargs)`: a `Store` on a fresh database of the test's backend (closed after it);
    `store_factory(database=..., ...)` opens an existing one."""
    from orchestrator_stub.db import Store

    opened: list[Any] = []

    def make(database: str | None = None, **kwargs: Any) -> Any:
        store = Store(database or databases.fresh(), **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
