"""spent passkey challenges: each WebAuthn challenge is accepted once, server-side

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "spent_passkey_challenges",
        sa.Column("challenge_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("spent_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("challenge_hash"),
    )


def downgrade():
    op.drop_table("spent_passkey_challenges")
