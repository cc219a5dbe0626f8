"""usage partitions: api_key_usage partitioned by UTC day of occurred_at, so retention drops whole days

api_key_usage becomes a table partitioned by RANGE (occurred_at), one partition per UTC day named
api_key_usage_pYYYYMMDD; its primary key becomes (id, occurred_at), since a partitioned table's unique keys must
hold the partition key. The BRIN index on occurred_at goes: it served the row-by-row retention DELETE, which
partition pruning and dropping replace. Nothing references the table and it references nothing (no foreign keys
either way), so no constraint has to move. The rollup triggers, the identity column's next value and the table's
grants carry over to the new table.

Two functions, owned by the role that runs this migration and run with its rights (SECURITY DEFINER), so the
app's role, which may not alter the table (docs/POSTGRESQL_SETUP.md), can still keep the partitions:
- usage_partitions_ensure(lo, hi) creates the missing daily partitions covering [lo, hi] (at most 1,000 days at
  once) as standalone tables ATTACHed to the parent: ATTACH takes SHARE UPDATE EXCLUSIVE on the parent, so
  inserts and reads go on, where CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE. One creator at a time
  (that lock, taken first), and a partition that exists already is skipped, so any number of workers may call it.
- usage_partitions_drop(name, cutoff) detaches and drops one partition that ends at or before cutoff (never a
  partition reaching into the present). It takes ACCESS EXCLUSIVE on the parent for the moment it takes; a role
  that owns the table detaches CONCURRENTLY instead (portal/usage/partitions.py).

There is no DEFAULT partition: with one, every later ATTACH would scan it and DETACH CONCURRENTLY would be
refused. The workers create partitions days ahead and a write that still finds none creates it and retries.

Converting a populated table, while the portal keeps writing to it:
1. One sequential scan lists the UTC days that hold rows (ACCESS SHARE: writers and readers go on).
2. The new table api_key_usage_next is created with a partition per such day and per day from yesterday to a
   week ahead, and the rows are copied into it in batches of 250,000 ids, each batch its own transaction
   (ACCESS SHARE on the old table only). Primary key and indexes are built after the copy, partition by partition.
   Each pass reads the highest id, then waits for the transactions writing to the table at that moment to end
   (an open writer may hold lower ids than the highest committed one), so no row is skipped.
3. The rows written meanwhile are copied in further batches until few remain; then, in the migration's
   transaction, ACCESS EXCLUSIVE on api_key_usage: the last rows are copied, the old table is dropped and the new
   one renamed in its place, with the triggers, grants and identity. Readers and writers wait only for this
   step, and the usage writers keep their rows buffered meanwhile, so no call is lost.
On 10M rows (bench/usage_migration.py, on a shared 2-core machine at load average 8, a writer inserting 200 rows
every 100 ms throughout): steps 1-2 took 95 s, step 3 held ACCESS EXCLUSIVE for 0.08 s, and the writer's longest
insert took 245 ms (its median 22 ms); the downgrade took 79 s and held the lock for 0.15 s. Do not run `flask
usage prune` at the same time: rows it deletes from the old table after they were copied would come back.

The downgrade is the same in reverse: a plain table with an identity primary key on id, the two indexes and the
BRIN index, rows copied in batches, the last ones under ACCESS EXCLUSIVE; the functions go.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-02 18:30:00.000000
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
TABLE = "api_key_usage"
NEXT = "api_key_usage_next"
BATCH = 250_000  # ids per copy transaction
AHEAD_DAYS = 7
MAX_DAYS = 1000  # partitions one call may create

ENSURE_FUNCTION = """
CREATE FUNCTION usage_partitions_ensure(lo timestamptz, hi timestamptz) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $fn$
DECLARE
    first_day date := (lo AT TIME ZONE 'UTC')::date;
    last_day date := (hi AT TIME ZONE 'UTC')::date;
    day date;
    part text;
    locked boolean := false;
    created integer := 0;
BEGIN
    IF last_day - first_day > {max_days} THEN
        RAISE EXCEPTION 'usage_partitions_ensure: % days at once, at most {max_days}', last_day - first_day;
    END IF;
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := 'api_key_usage_p' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        IF NOT locked THEN  -- only when something is missing: the common call takes no lock
            -- What ATTACH takes anyway, a lock creators queue for; taking it also makes this session see the
            -- partitions a creator that held it before has committed.
            LOCK TABLE ONLY api_key_usage IN SHARE UPDATE EXCLUSIVE MODE;
            locked := true;
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE api_key_usage INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('ALTER TABLE api_key_usage ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, day::text || ' 00:00:00+00', (day + 1)::text || ' 00:00:00+00');
        created := created + 1;
    END LOOP;
    RETURN created;
END
$fn$
"""

# The bound a partition ends at, read from its definition ("FOR VALUES FROM ('…') TO ('…')").
DROP_FUNCTION = """
CREATE FUNCTION usage_partitions_drop(part text, cutoff timestamptz) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $fn$
DECLARE
    upper_bound timestamptz;
BEGIN
    IF cutoff > now() THEN
        RAISE EXCEPTION 'usage_partitions_drop: the cutoff % is in the future', cutoff;
    END IF;
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz INTO upper_bound
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'api_key_usage'::regclass AND c.relname = part;
    IF upper_bound IS NULL OR upper_bound > cutoff THEN
        RETURN false;
    END IF;
    EXECUTE format('ALTER TABLE api_key_usage DETACH PARTITION %I', part);
    EXECUTE format('DROP TABLE %I', part);
    RETURN true;
END
$fn$
"""

# The table's indexes besides the primary key, on both shapes (suffix of ix_<table>_… → what it indexes).
INDEXES = {"org_time": "(organization_id, occurred_at)", "key_time": "(key_id, occurred_at)"}

FUNCTIONS = ("usage_partitions_ensure(timestamptz, timestamptz)", "usage_partitions_drop(text, timestamptz)")


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def _scalar(sql: str, **params: Any) -> Any:
    return op.get_bind().execute(sa.text(sql), params).scalar()


def _days_with_rows() -> list[date]:
    rows = op.get_bind().execute(
        sa.text(f"SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date FROM {TABLE} ORDER BY 1")  # noqa: S608
    )
    return [r[0] for r in rows]


def _create_partitions(parent: str, days: set[date]) -> None:
    for day in sorted(days):
        if _scalar("SELECT to_regclass(:name)", name=partition_name(day)) is None:
            op.execute(
                f"CREATE TABLE {partition_name(day)} PARTITION OF {parent}"
                f" FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"
            )


def _wait_for_writers() -> None:
    """Wait until every transaction writing to the old table now has ended. Ids are drawn when a row is inserted,
    not when it commits: a writer still open may hold ids below the highest committed one, and copying up to that
    id before it commits would skip its rows for good. Writers take ROW EXCLUSIVE on the table before they draw an
    id, so waiting for the transactions granted that lock at this moment is enough: writers still queued for it
    (behind the swap's ACCESS EXCLUSIVE, say) hold no id yet, and new writers are not held up."""
    holders = set(
        op.get_bind()
        .execute(
            sa.text(
                "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' AND granted"
                " AND relation = CAST(:t AS regclass) AND mode = 'RowExclusiveLock'"
                " AND pid IS DISTINCT FROM pg_backend_pid()"  # prepared transactions have no pid
            ),
            {"t": TABLE},
        )
        .scalars()
    )
    started = time.monotonic()
    while holders:
        time.sleep(0.01)
        holders &= set(
            op.get_bind()
            .execute(
                sa.text("SELECT virtualtransaction FROM pg_locks WHERE virtualtransaction = ANY(:v)"),
                {"v": sorted(holders)},
            )
            .scalars()
        )
        if holders and time.monotonic() - started > 10:
            log.warning("0022: waiting for %d open transactions that write to %s to end", len(holders), TABLE)
            started = time.monotonic()


def _copy_batches(start: int) -> int:
    """Copy rows with ids in (start, max id] from the old table to the new one, a batch per transaction; returns
    the last id copied. Rows are never updated and every writer that could hold an id up to max id has ended
    before the copy starts (:func:`_wait_for_writers`), so copying by id misses nothing."""
    last = _scalar(f"SELECT max(id) FROM {TABLE}") or 0  # noqa: S608
    _wait_for_writers()
    while start < last:
        end = min(start + BATCH, last)
        op.execute(
            f"INSERT INTO {NEXT} SELECT * FROM {TABLE} WHERE id > {int(start)} AND id <= {int(end)}"  # noqa: S608
        )
        start = end
    return start


def _copy_until_few_left(start: int) -> int:
    """Batches until fewer than one batch of new rows arrived during the last pass."""
    while True:
        copied = _copy_batches(start)
        if copied - start < BATCH:
            return copied
        start = copied


def _grants() -> list[str]:
    """GRANT statements repeating the table's and its identity sequence's grants, for the table that takes its
    name (and its sequence's)."""
    statements = []
    for relation in (TABLE, f"{TABLE}_id_seq"):
        rows = op.get_bind().execute(
            sa.text(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,"
                " a.privilege_type, a.is_grantable"
                " FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(:rel) AND a.grantee <> c.relowner"
            ),
            {"rel": relation},
        )
        kind = "SEQUENCE " if relation.endswith("_seq") else ""
        for grantee, privilege, grantable in rows:
            option = " WITH GRANT OPTION" if grantable else ""
            statements.append(f"GRANT {privilege} ON {kind}{relation} TO {grantee}{option}")
    return statements


def _triggers() -> list[str]:
    """CREATE TRIGGER statements of the old table's own triggers (they name the table, which the new one takes)."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal"
            " ORDER BY tgname"
        ),
        {"t": TABLE},
    )
    return [r[0] for r in rows]


def _build_keys(primary_key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The new table's primary key and indexes (:data:`INDEXES` and ``extra``); returns their renames for
    :func:`_swap` (the new table's names to the final ones)."""
    op.execute(f"ALTER TABLE {NEXT} ADD CONSTRAINT {NEXT}_pkey PRIMARY KEY ({primary_key})")
    renames = {f"{NEXT}_pkey": f"{TABLE}_pkey"}
    for suffix, definition in {**INDEXES, **(extra or {})}.items():
        op.execute(f"CREATE INDEX ix_{NEXT}_{suffix} ON {NEXT} {definition}")
        renames[f"ix_{NEXT}_{suffix}"] = f"ix_{TABLE}_{suffix}"
    return renames


def _swap(last_copied: int, indexes: dict[str, str], partitioned: bool) -> None:
    """Under ACCESS EXCLUSIVE: copy the last rows, drop the old table, give the new one its name, triggers,
    grants and identity. ``indexes`` maps the new table's index names to their final names."""
    locked = time.monotonic()
    op.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
    if partitioned:
        days = op.get_bind().execute(
            sa.text(f"SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date FROM {TABLE} WHERE id > :id"),  # noqa: S608
            {"id": last_copied},
        )
        _create_partitions(NEXT, {r[0] for r in days})
    _copy_batches(last_copied)
    next_id = _scalar(
        f"SELECT greatest((SELECT max(id) FROM {TABLE}), (SELECT last_value FROM {TABLE}_id_seq)) + 1"  # noqa: S608
    )
    triggers, grants = _triggers(), _grants()
    op.execute(f"DROP TABLE {TABLE}")
    op.execute(f"ALTER TABLE {NEXT} RENAME TO {TABLE}")
    op.execute(f"ALTER SEQUENCE {NEXT}_id_seq RENAME TO {TABLE}_id_seq")
    op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id RESTART WITH {int(next_id)}")
    for old, new in indexes.items():
        op.execute(f"ALTER INDEX {old} RENAME TO {new}")
    for statement in [*triggers, *grants]:  # both name the table (and sequence) by their final names
        op.execute(statement)
    log.info(
        "0022: the last rows copied and the tables swapped under ACCESS EXCLUSIVE in %.2f s", time.monotonic() - locked
    )


def upgrade():
    schema = _scalar("SELECT quote_ident(current_schema())")
    op.execute(ENSURE_FUNCTION.format(schema=schema, max_days=MAX_DAYS))
    op.execute(DROP_FUNCTION.format(schema=schema))
    for function in FUNCTIONS:  # the app's role gets EXECUTE from the default privileges, others none
        op.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")
    started = time.monotonic()
    with op.get_context().autocommit_block():
        today = datetime.now(UTC).date()
        days = {*_days_with_rows(), *(today + timedelta(days=n) for n in range(-1, AHEAD_DAYS + 1))}
        op.execute(
            f"CREATE TABLE {NEXT} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY)"
            " PARTITION BY RANGE (occurred_at)"
        )
        _create_partitions(NEXT, days)
        copied = _copy_batches(0)
        renames = _build_keys("id, occurred_at")
        copied = _copy_until_few_left(copied)
        # Rows written after midnight of the last day listed land in partitions made above (a week ahead).
    log.info("0022: %s copied into daily partitions in %.1f s", TABLE, time.monotonic() - started)
    _swap(copied, renames, partitioned=True)


def downgrade():
    started = time.monotonic()
    with op.get_context().autocommit_block():
        op.execute(f"CREATE TABLE {NEXT} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY)")
        copied = _copy_batches(0)
        renames = _build_keys("id", {"occurred_brin": "USING brin (occurred_at)"})
        copied = _copy_until_few_left(copied)
    log.info("0022: %s copied into one table in %.1f s", TABLE, time.monotonic() - started)
    _swap(copied, renames, partitioned=False)
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
