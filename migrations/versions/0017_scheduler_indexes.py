"""scheduler indexes: the notification scheduler's passes read only what is due

- ix_api_keys_expires_at (partial, keys with an expiry): key.expiring and key.expired read the keys whose expiry
  falls in a window around now (7 days ahead, 7 days back) by an index range instead of every key. Verification
  touches last_used_at, not expires_at, so its touches stay HOT updates.
- ix_usage_org_hourly_bucket: ratelimit.exceeded and quota.threshold start from the organizations with calls in
  the last hours, an index range over recent buckets instead of every organization's rows. The fold's upserts
  change counts only, never the bucket, so they stay HOT updates too.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_api_keys_expires_at", "api_keys", ["expires_at"], postgresql_where=sa.text("expires_at IS NOT NULL")
    )
    op.create_index("ix_usage_org_hourly_bucket", "usage_org_hourly", ["bucket"])


def downgrade():
    op.drop_index("ix_usage_org_hourly_bucket", table_name="usage_org_hourly")
    op.drop_index("ix_api_keys_expires_at", table_name="api_keys")
