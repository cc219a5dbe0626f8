"""organization lifecycle: deleted organizations stay on record, and members return to the one they used last

organizations.deleted_at marks an organization its owner deleted: its keys were revoked and its members removed
first, and the row stays (with its audit trail and slug) so support staff can still see what happened and the
slug is never handed out again. users.last_organization_id is the organization a member used last, so signing
in again lands there (cleared when that organization row goes).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-22 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("organizations", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("last_organization_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.create_foreign_key(
        "users_last_organization_id_fkey",
        "users",
        "organizations",
        ["last_organization_id"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade():
    op.drop_constraint("users_last_organization_id_fkey", "users", type_="foreignkey")
    op.drop_column("users", "last_organization_id")
    op.drop_column("organizations", "deleted_at")
