"""partition drop edges: usage_partitions_drop brings its own lock timeout, tolerates a second prune, drops leftovers

usage_partitions_drop(name, cutoff) (0022) is how a role that does not own api_key_usage drops an expired daily
partition, and how the owner does behind a transaction pooler (portal/usage/partitions.py). It is replaced by a
function that:

- runs with `lock_timeout = '10s'` (portal.usage.partitions.LOCK_TIMEOUT_MS) set on the function itself. Its
  caller used to set it for the session, and behind PgBouncer in transaction pooling that `SET` stays on whichever
  server connection ran it: the detach could then run on another one without any timeout, and its ACCESS
  EXCLUSIVE request, waiting behind a long read, would queue every usage insert behind it for as long as that
  read lasts. A setting of the function applies to every call, on any connection, for the call only.
- takes ACCESS EXCLUSIVE on the table first and then reads again whether the partition is still attached: two
  prunes at once no longer fail on the partition the other one dropped meanwhile; the second finds it gone and
  returns false.
- finishes a partition left "detach pending" by an interrupted concurrent detach (DETACH … FINALIZE, under SHARE
  UPDATE EXCLUSIVE as the concurrent detach itself), where the plain DETACH was refused.
- drops a table a prune detached but did not drop (the DROP failed, or the process died in between): a plain
  table of the schema named api_key_usage_pYYYYMMDD (a name that reads as a date), owned by the table's owner,
  neither a partition nor an inheritance child of anything, whose day ends at or before the cutoff. The
  partitions of api_key_usage_next that 0022 builds under the same names are partitions, so never touched.

usage_partitions_ensure(lo, hi) keeps its definition and gets no timeout of its own: it takes SHARE UPDATE
EXCLUSIVE, which inserts and reads do not queue behind, and the usage writers call it in a transaction that
starts with `SET LOCAL lock_timeout = '5s'` (portal/verification/sql.py), which reaches it through any pooler; a
setting on the function would override their shorter timeout.

The downgrade restores 0022's function (its text, read from that migration), which has no lock timeout.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

FUNCTION = "usage_partitions_drop(text, timestamptz)"
LOCK_TIMEOUT = "10s"  # as portal.usage.partitions.LOCK_TIMEOUT_MS

# The bound a partition ends at, read from its definition ("FOR VALUES FROM ('…') TO ('…')"), and whether a
# concurrent detach of it was interrupted.
DROP_FUNCTION = """
CREATE OR REPLACE FUNCTION usage_partitions_drop(part text, cutoff timestamptz) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp SET lock_timeout = '{lock_timeout}' AS $fn$
DECLARE
    upper_bound timestamptz;
    pending boolean;
    leftover oid;
    leftover_schema name;
    leftover_day date;
BEGIN
    IF cutoff > now() THEN
        RAISE EXCEPTION 'usage_partitions_drop: the cutoff % is in the future', cutoff;
    END IF;
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz, i.inhdetachpending
    INTO upper_bound, pending
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'api_key_usage'::regclass AND c.relname = part;
    IF upper_bound IS NOT NULL THEN
        IF upper_bound > cutoff THEN
            RETURN false;
        END IF;
        IF pending THEN  -- what FINALIZE takes: inserts and reads go on
            LOCK TABLE ONLY api_key_usage IN SHARE UPDATE EXCLUSIVE MODE;
        ELSE
            LOCK TABLE ONLY api_key_usage IN ACCESS EXCLUSIVE MODE;
        END IF;
        -- Read again under the lock: another prune may have detached and dropped it while this one waited.
        SELECT i.inhdetachpending INTO pending
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'api_key_usage'::regclass AND c.relname = part;
        IF FOUND THEN
            EXECUTE format('ALTER TABLE api_key_usage DETACH PARTITION %I%s', part,
                           CASE WHEN pending THEN ' FINALIZE' ELSE '' END);
            EXECUTE format('DROP TABLE %I', part);
            RETURN true;
        END IF;
    END IF;
    -- Not (or no longer) a partition: a table detached by a prune that did not drop it, or nothing.
    SELECT c.oid, n.nspname INTO leftover, leftover_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class t ON t.oid = 'api_key_usage'::regclass
    WHERE c.relname = part AND c.relnamespace = t.relnamespace AND c.relowner = t.relowner AND c.relkind = 'r'
      AND NOT c.relispartition AND NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = c.oid);
    IF leftover IS NULL OR part !~ '^api_key_usage_p[0-9]{{8}}$' THEN
        RETURN false;
    END IF;
    BEGIN
        leftover_day := substring(part FROM '[0-9]{{8}}$')::date;
    EXCEPTION WHEN data_exception THEN
        RETURN false;  -- eight digits that are no date
    END;
    IF (leftover_day + 1)::timestamp AT TIME ZONE 'UTC' > cutoff THEN  -- the day must end at or before the cutoff
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('DROP TABLE %I.%I', leftover_schema, part);
    EXCEPTION WHEN undefined_table THEN
        RETURN false;  -- another prune dropped it first
    END;
    RETURN true;
END
$fn$
"""


def _sibling(stem: str) -> ModuleType:
    """An earlier migration's module, for its function texts (its file name is not an importable name)."""
    spec = importlib.util.spec_from_file_location(f"migration_{stem}", Path(__file__).with_name(f"{stem}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar())


def upgrade():
    op.execute(DROP_FUNCTION.format(schema=_schema(), lock_timeout=LOCK_TIMEOUT))


def downgrade():
    text = _sibling("0022_usage_partitions").DROP_FUNCTION
    if text.count("CREATE FUNCTION") != 1:
        raise RuntimeError("expected 0022's usage_partitions_drop to start with CREATE FUNCTION")
    # CREATE OR REPLACE keeps the owner and grants, and takes the settings of 0022's text (search_path only): the
    # RESET says so again.
    op.execute(text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").format(schema=_schema()))
    op.execute(f"ALTER FUNCTION {FUNCTION} RESET lock_timeout")
