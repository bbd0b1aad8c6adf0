"""Where the store's database is (`STUB_DB`), how it is opened, and the one way statements reach it.

`STUB_DB` is a SQLite file path (the embedded default: one process, one file) or a PostgreSQL URL
(`postgresql://user:password@host:port/db`: any number of stub processes on one database). Both go through
SQLAlchemy Core with plain SQL text, so every query is written once; the few differences are named here
(`Database.for_update`, `Database.skip_locked`, the clock).

- SQLite: one pooled connection (threads take turns, as they took a lock before), WAL with
  `synchronous=FULL`, and every write transaction `BEGIN IMMEDIATE`, so even a second process on the same
  file cannot interleave. The file is made 0600: it holds notify_urls and their tokens.
- PostgreSQL: psycopg 3 under SQLAlchemy's connection pool (pre-pinged, so a restarted server costs one
  failed check, not a failed request). READ COMMITTED, with row locks (`FOR UPDATE [SKIP LOCKED]`) where two
  replicas could otherwise take the same row. Times come from the server's clock (`now()`), so replicas on
  machines whose clocks disagree still judge every lease alike.

A password in the URL is never shown: `Database.shown` (logs, `repr`, errors) masks it, and the engine hides
statement parameters from its errors (they carry notify_urls and attempt secret hashes).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, RowMapping, make_url
from sqlalchemy.exc import ArgumentError

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
POOL_SIZE = 10  # PostgreSQL connections per replica, and as many again at peaks (FastAPI runs up to 40 threads)


class UnencodableText(ValueError):
    """A text value the store cannot write (a lone surrogate, or a NUL that PostgreSQL refuses): refused before
    it reaches the database, on both backends alike, and turned into a 422 by the caller."""


class BadDatabaseUrl(ValueError):
    """STUB_DB is neither a usable path nor a PostgreSQL URL; the message never carries a password."""


def is_postgres(value: str) -> bool:
    return value.split(":", 1)[0].lower() in POSTGRES_SCHEMES


def mask_password(value: str) -> str:
    """`value` with any password replaced by `***` (a path comes back unchanged)."""
    if not is_postgres(value):
        return value
    scheme = value.split("://", 1)[0]
    try:
        url = make_url(_driver_url(value))
    except (ArgumentError, ValueError):
        return scheme + "://***"  # unparsable: show nothing that could be a password
    return url.set(drivername=scheme).render_as_string(hide_password=True)


def _driver_url(value: str) -> str:
    """The URL with SQLAlchemy's psycopg 3 driver named (plain `postgresql://` would mean psycopg2)."""
    scheme, rest = value.split("://", 1) if "://" in value else (value, "")
    return f"postgresql+psycopg://{rest}" if scheme.lower() in ("postgresql", "postgres") else value


def checked(value: str) -> str:
    """The text itself, or `UnencodableText`: valid UTF-8 and no NUL, whatever the backend."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnencodableText("a text value is not valid Unicode (lone surrogate)") from None
    if "\x00" in value:
        raise UnencodableText("a text value contains a NUL character")
    return value


@functools.lru_cache(maxsize=512)
def _statement(sql: str, expanding: frozenset[str]) -> sa.TextClause:
    clause = sa.text(sql)
    if expanding:
        clause = clause.bindparams(*(sa.bindparam(name, expanding=True) for name in sorted(expanding)))
    return clause


@dataclass
class Tx:
    """One transaction: plain SQL with `:name` parameters (a list or tuple value expands for `IN :name`)."""

    conn: Connection
    clock: Callable[[], float]
    queued: list[Any] = field(default_factory=list)  # `schema.Queued`: jobs that became claimable (waiting claims)
    events: list[Any] = field(default_factory=list)  # `events.Pending`: the log's rows, written just before COMMIT
    webhooks: bool = False  # a webhook delivery became due (its sender may look)

    @functools.cached_property
    def now(self) -> float:
        """The transaction's time, read once, when first needed."""
        return self.clock()

    def run(self, sql: str, **params: Any) -> sa.CursorResult[Any]:
        expanding = frozenset(k for k, v in params.items() if isinstance(v, (list, tuple)))
        for value in params.values():
            if isinstance(value, str):
                checked(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, str):
                        checked(item)
        return self.conn.execute(_statement(sql, expanding), params)

    def rows(self, sql: str, **params: Any) -> Sequence[RowMapping]:
        return self.run(sql, **params).mappings().all()

    def row(self, sql: str, **params: Any) -> RowMapping | None:
        return self.run(sql, **params).mappings().first()

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.run(sql, **params).scalar()

    def count(self, sql: str, **params: Any) -> int:
        """The rows a statement changed."""
        return int(self.run(sql, **params).rowcount)


class Database:
    """The engine and what differs between SQLite and PostgreSQL. `str()`/`repr()` never show a password."""

    def __init__(self, value: str | Path, *, pool_size: int = POOL_SIZE) -> None:
        text = str(value)
        self.postgres = is_postgres(text)
        self.shown = mask_password(text)
        self.path: Path | None = None if self.postgres else Path(text.removeprefix("sqlite:///"))
        # The backend process ids of this replica's own connections: its listener skips their notices.
        self.own_pids: set[int] = set()
        if self.postgres:
            self.engine = _postgres_engine(text, self.own_pids, pool_size)
            self._conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        else:
            assert self.path is not None
            self.engine = _sqlite_engine(self.path)
            self._conninfo = ""
        # Row locks: PostgreSQL's, for rows two replicas could both want. SQLite's BEGIN IMMEDIATE already makes
        # each transaction the only writer, so there the clauses are empty.
        self.for_update = " FOR UPDATE" if self.postgres else ""
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if self.postgres else ""

    def __repr__(self) -> str:
        return f"Database({self.shown!r})"

    __str__ = __repr__

    def listen_conninfo(self) -> str:
        """A libpq connection string for the listener's own connection (it holds the password: never shown)."""
        return self._conninfo

    @property
    def backend(self) -> str:
        return "postgresql" if self.postgres else "sqlite"

    @contextlib.contextmanager
    def transaction(self, clock: Callable[[], float] | None) -> Iterator[Tx]:
        """A write transaction; `clock` None: the database's clock (PostgreSQL) or the process's (SQLite)."""
        with self.engine.connect() as conn, conn.begin():
            yield Tx(conn, functools.partial(self._now, conn, clock))

    @contextlib.contextmanager
    def reading(self, clock: Callable[[], float] | None = None) -> Iterator[Tx]:
        """A read-only transaction: one snapshot for its statements, no write lock taken (SQLite: plain BEGIN)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(stub_read_only=True)
            with conn.begin():
                yield Tx(conn, functools.partial(self._now, conn, clock))

    def now(self) -> float:
        """The clock leases are judged by: the server's on PostgreSQL, this process's on SQLite."""
        if not self.postgres:
            return _wall()
        with self.engine.connect() as conn:
            return self._now(conn, None)

    def _now(self, conn: Connection, clock: Callable[[], float] | None) -> float:
        if clock is not None:
            return clock()
        if self.postgres:
            return float(
                conn.exec_driver_sql("SELECT CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)").scalar_one()
            )
        return _wall()

    def dispose(self) -> None:
        self.engine.dispose()


def _wall() -> float:
    return time.time()


def _sqlite_engine(path: Path) -> Engine:
    private_file(path)
    engine = sa.create_engine(
        URL.create("sqlite", database=str(path)),
        # One connection: threads take turns at it, in the pool's queue (cheaper than SQLite's busy-wait).
        poolclass=sa.pool.QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=120,
        connect_args={"check_same_thread": False, "timeout": 30},
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the store says BEGIN itself (below): one method, one transaction
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get("stub_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(value: str, own_pids: set[int], pool_size: int) -> Engine:
    try:
        url = make_url(_driver_url(value))
    except (ArgumentError, ValueError):
        raise BadDatabaseUrl(f"STUB_DB: not a PostgreSQL URL: {mask_password(value)}") from None
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=30,
        hide_parameters=True,
        connect_args={"connect_timeout": 10, "application_name": "orchestrator_stub"},
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        record.info["pid"] = dbapi_conn.info.backend_pid
        own_pids.add(record.info["pid"])

    @event.listens_for(engine, "close")
    def _close(_dbapi_conn: Any, record: Any) -> None:
        own_pids.discard(record.info.get("pid", -1))

    return engine


def private_file(path: Path) -> None:
    """Create the database file 0600, or tighten an existing one: it holds notify_urls and their tokens.

    SQLite gives its -wal and -shm files the database file's permissions, so they follow.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
