"""Protocol v1.2's output targets: one row per target handed out (a claim, or a dispatcher's delivery).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A file some stubs made before versioned migrations has the table already: it was created if missing.
    if "output_targets" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "output_targets",
        sa.Column("video_key", sa.Text(), primary_key=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("poster_key", sa.Text()),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("verified_at", sa.Double()),
    )
    op.create_index("output_targets_by_job", "output_targets", ["job_id", "attempt"])


def downgrade() -> None:
    op.drop_table("output_targets")
