"""Alembic's migration scripts for the stub's store (`orchestrator_stub.db.migrate` runs them)."""
