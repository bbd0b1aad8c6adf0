"""Alembic's environment: always the store's own connection, already in a transaction that holds the migration
lock (`orchestrator_stub.db.migrate.upgrade`), so every revision runs inside that one transaction."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
