"""events seen: when each member last opened the organization's events page (the bell's read marker)

memberships.events_seen_at is the newest event the member has seen listed; the bell in the header counts the
organization's events after it (ix_notification_events_org_occurred serves that count). NULL: never opened,
every event counts. Kept per membership, so a member of two organizations has a marker in each, and it goes
with the membership when the member leaves.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("memberships", sa.Column("events_seen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    op.drop_column("memberships", "events_seen_at")
