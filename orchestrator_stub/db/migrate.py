"""The store's schema, created and migrated by Alembic (`migrations/versions/`, one file per revision).

`upgrade(db)` runs at every start, in one transaction that first takes the migration lock (PostgreSQL: an
advisory lock, so replicas starting side by side migrate once; SQLite: BEGIN IMMEDIATE), then brings the
schema to the newest revision. A SQLite file made before the stub used Alembic (no `alembic_version` table)
is recognised by its shape and stamped with the revision it matches, then upgraded like any other: its rows
stay where they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from orchestrator_stub.db.engine import Database

log = logging.getLogger("orchestrator_stub.db")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x57_1B_DB_00  # PostgreSQL advisory lock id: one migrating replica at a time


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def legacy_revision(conn: Connection) -> str | None:
    """The revision an unversioned database (made before Alembic) matches; None when it has a version or no
    tables at all. The columns and tables each revision adds tell them apart."""
    tables = set(sa.inspect(conn).get_table_names())
    if "alembic_version" in tables or "jobs" not in tables:
        return None
    columns = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
    if "attempt_secret_hash" not in columns:
        return "0001"
    if "job_events" in tables:  # the event log and webhook deliveries (issue 28, main d140ec1)
        return "0004"
    return "0003" if "output_targets" in tables else "0002"


def upgrade(db: Database) -> str:
    """Bring the schema to the newest revision; returns it."""
    # Alembic tells of its context at INFO on every start; what changed is logged here, once.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with db.engine.connect() as conn, conn.begin():
        if db.postgres:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        before = current(conn)
        if (legacy := legacy_revision(conn)) is not None:
            log.info("database from before versioned migrations", extra={"stamped": legacy})
            command.stamp(config(conn), legacy)
            before = legacy
        command.upgrade(config(conn), "head")
        after = current(conn)
    if after != before:
        log.info("database migrated", extra={"from_revision": before, "to_revision": after, "db": db.shown})
    assert after is not None
    return after
