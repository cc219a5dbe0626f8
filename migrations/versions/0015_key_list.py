"""key list indexes: 10,000 keys in one organization listed, paged, searched and filtered quickly

- ix_api_keys_org_created gains the id (the list's tie-breaker), so newest and oldest first, deep pages
  included, are read in index order: the list pages ids with an index-only scan, then reads those 20 rows.
- ix_api_keys_org_creator (organization_id, created_by_id): the creator filter and its choices.
- trigram (pg_trgm) GIN indexes on name, hint and external_id: the list's search is a case-insensitive
  substring (ILIKE '%…%'), which a B-tree cannot serve; without them a search reads every key of the
  organization. pg_trgm ships with PostgreSQL (contrib) and is a trusted extension, so the database's owner
  may create it. Downgrade drops the indexes and leaves the extension, which other objects may use.

No index on last_used_at: verification touches it (at most once a minute per key), and an index on it would
make every touch update every index of the row instead of a HOT update. The list sorts by it in memory.
The numbers are in docs/performance.md ("The key list with many keys").

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-12 10:00:00.000000
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TRIGRAM_COLUMNS = ("name", "hint", "external_id")


def upgrade():
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.drop_index("ix_api_keys_org_created", table_name="api_keys")
    op.execute("CREATE INDEX ix_api_keys_org_created ON api_keys (organization_id, created_at DESC, id DESC)")
    op.create_index("ix_api_keys_org_creator", "api_keys", ["organization_id", "created_by_id"])
    for column in TRIGRAM_COLUMNS:
        op.create_index(
            f"ix_api_keys_{column}_trgm",
            "api_keys",
            [column],
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
        )


def downgrade():
    for column in TRIGRAM_COLUMNS:
        op.drop_index(f"ix_api_keys_{column}_trgm", table_name="api_keys")
    op.drop_index("ix_api_keys_org_creator", table_name="api_keys")
    op.drop_index("ix_api_keys_org_created", table_name="api_keys")
    op.execute("CREATE INDEX ix_api_keys_org_created ON api_keys (organization_id, created_at DESC)")
