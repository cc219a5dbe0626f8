"""webhook claims: each endpoint's pending deliveries in due order, so a deliverer takes one endpoint's next rows
without reading every due row of every endpoint. It replaces the index of all pending rows by due time, which the
planner would otherwise walk, filtering by endpoint, through a whole backlog.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02 16:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_pending_endpoint",
        "webhook_deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade():
    op.drop_index("ix_webhook_deliveries_pending_endpoint", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
