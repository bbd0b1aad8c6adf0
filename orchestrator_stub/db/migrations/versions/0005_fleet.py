"""A fleet's orchestrator: every attempt kept (quarantine, metrics), retry elsewhere.

- `attempts`: one row per claim, ended with its outcome; `fault` marks an ending that counts against the worker
  (it crashed, ran out of memory, timed out, lost its lease, sent a result that was refused). Quarantine and the
  claim and lease-expiry counters are read from it, so every replica sees the same figures.
- `jobs.avoid_worker_id`/`avoid_until`: after a failed attempt, the worker it failed on is passed over until then.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double()),
        sa.Column("outcome", sa.Text()),
        sa.Column("error_code", sa.Text()),
        sa.Column("fault", sa.Integer(), nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    op.create_index("attempts_by_job", "attempts", ["job_id", "attempt"], unique=True)
    op.create_index("attempts_by_worker_outcome", "attempts", ["worker_id", "outcome", "id"])
    op.create_index("attempts_by_worker_fault", "attempts", ["worker_id", "fault", "id"])
    op.create_index(
        "attempts_faults_by_end",
        "attempts",
        ["ended_at"],
        sqlite_where=sa.text("fault = 1"),
        postgresql_where=sa.text("fault = 1"),
    )
    op.add_column("jobs", sa.Column("avoid_worker_id", sa.Text()))
    op.add_column("jobs", sa.Column("avoid_until", sa.Double()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("avoid_until", "avoid_worker_id"):
            batch.drop_column(column)
    op.drop_table("attempts")
