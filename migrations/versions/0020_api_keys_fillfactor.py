"""api_keys fillfactor 80: room on every page for a key's next version, so the usage writer's ``last_used_at``
touch (at most once a minute per key in use) is a HOT update.

A full page makes each touch a new tuple on another page plus an entry in every index of the table (ten,
three of them trigram GIN indexes for the key list's search), and every lookup by key hash then steps over the
dead version. With free space on the page the update stays on it and touches no index. Measured by
``make bench-verify-cpu`` (10,000 keys, random calls): PostgreSQL instructions per verification fell from about
1.54 M to 1.08 M (the usage writer's backend 524 k → 215 k, the verification connection's 1.03 M → 0.88 M).

``ALTER TABLE … SET (fillfactor)`` takes a SHARE UPDATE EXCLUSIVE lock for a catalog change (reads and writes
go on) and rewrites nothing: pages written from now on keep the room, and rows of existing full pages move to
such pages on their next update.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02 19:00:00.000000
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE api_keys SET (fillfactor = 80)")


def downgrade():
    op.execute("ALTER TABLE api_keys RESET (fillfactor)")
