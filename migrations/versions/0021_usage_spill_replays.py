"""usage spill replays: the spill files whose rows were written, one row each

A worker that cannot write its buffered usage rows when it stops (the database down or hung) writes them to a
spill file; the next worker or `flask usage replay` writes them later (portal/verification/spill.py). The file's
id is inserted here in the same transaction as its rows, so a file is never written twice: not by two replayers
at once (the second waits on the first's key, then finds it), nor again after a crash between the commit and the
file's removal.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "usage_spill_replays",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("replayed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("usage_rows", sa.Integer(), nullable=False),
        sa.Column("invalid_key_calls", sa.BigInteger(), nullable=False),
    )


def downgrade():
    op.drop_table("usage_spill_replays")
