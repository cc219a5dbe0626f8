"""leak response: what a secret-scanning report does to an organization's key

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-14 10:00:00.000000

There is no 0008: that number was never released; the chain goes 0007 -> 0009.

``notify`` (the default) tells the owners; ``revoke`` revokes the reported key at once and tells them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "organizations", sa.Column("leak_action", sa.String(length=10), server_default="notify", nullable=False)
    )
    op.create_check_constraint("ck_organizations_leak_action", "organizations", "leak_action IN ('notify', 'revoke')")


def downgrade():
    op.drop_constraint("ck_organizations_leak_action", "organizations", type_="check")
    op.drop_column("organizations", "leak_action")
