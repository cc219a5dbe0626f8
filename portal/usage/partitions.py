"""Daily partitions of ``api_key_usage``: made ahead of the calls that land in them, dropped whole once expired.

A partition is one UTC day (why a day: docs/performance.md, "Partitions of one day"), named
``api_key_usage_pYYYYMMDD``. They are made by the database function ``usage_partitions_ensure`` (migration
0022), which every caller shares: the usage writers ahead of time and on a write that finds none, ``flask usage
partitions create``, the traffic simulator. Retention drops the partitions that end before the cutoff: no row is
deleted one by one, so nothing is left for vacuum. A role that owns the table detaches them ``CONCURRENTLY``
(inserts and reads go on); any other role, and the owner behind a transaction pooler, goes through
``usage_partitions_drop``, which holds ACCESS EXCLUSIVE on the table for the moment of the drop and brings its
own lock timeout (docs/operations.md, "Usage partitions"). A table a prune detached but did not drop is dropped
by the next prune past its day (:func:`leftovers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal.db import Reader, read
from portal.extensions import db
from portal.timeutil import utcnow
from portal.verification import pooling

AHEAD_DAYS = 7  # default for USAGE_PARTITIONS_AHEAD_DAYS
LOCK_TIMEOUT_MS = 10_000  # a drop waits this long for the table's readers and writers, then gives up
PRUNE_LOCK = 7_201_024  # advisory lock id: one concurrent detaching prune at a time (drop_expired)

ENSURE_SQL = sa.text("SELECT usage_partitions_ensure(:lo, :hi)")
# A partition another session drops during the read still has its catalog rows in this statement's snapshot,
# but its bound and size read as NULL (they look the relation up as it is now): it is gone, so left out.
LIST_SQL = sa.text(r"""
SELECT * FROM (
    SELECT c.relname,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz AS lo,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS hi,
           c.reltuples::bigint, pg_total_relation_size(c.oid) AS size, i.inhdetachpending
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'api_key_usage'::regclass
) AS p
WHERE lo IS NOT NULL AND hi IS NOT NULL AND size IS NOT NULL
ORDER BY lo
""")
# Tables a prune detached but did not drop (its DROP failed, or it died in between): plain tables of the usage
# table's schema and owner named like a day's partition, attached to nothing. The partitions migration 0022 builds
# under the same names for api_key_usage_next are partitions, so never among them (as in usage_partitions_drop).
LEFTOVERS_SQL = sa.text("""
SELECT * FROM (
    SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) AS size
    FROM pg_class c JOIN pg_class t ON t.oid = 'api_key_usage'::regclass
    WHERE c.relnamespace = t.relnamespace AND c.relowner = t.relowner AND c.relkind = 'r' AND NOT c.relispartition
      AND c.relname ~ '^api_key_usage_p[0-9]{8}$' AND NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = c.oid)
) AS t
WHERE size IS NOT NULL
""")
# Whether a partition is attached (a row: whether its detach is pending) or not (no row).
ATTACHED_SQL = sa.text("""
SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'api_key_usage'::regclass AND c.relname = :name
""")
OWNER_SQL = sa.text("SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = 'api_key_usage'::regclass")
DROP_FUNCTION_SQL = sa.text("SELECT usage_partitions_drop(:name, :cutoff)")
UNDEFINED_TABLE = "42P01"  # SQLSTATE: no such table
# The hour from which a key's newest ``need`` calls lie, by its hourly rollup (else its oldest hour there).
KEY_SINCE_SQL = sa.text("""
SELECT coalesce(
    (SELECT bucket FROM (SELECT bucket, sum(calls) OVER (ORDER BY bucket DESC) AS running
                         FROM usage_key_hourly WHERE key_id = :key ORDER BY bucket DESC) AS h
     WHERE running >= :need LIMIT 1),
    (SELECT min(bucket) FROM usage_key_hourly WHERE key_id = :key))
""")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Partition:
    """One day's partition: its bounds (UTC), estimated rows (-1: never analyzed) and bytes with its indexes."""

    name: str
    start: datetime
    end: datetime
    rows: int
    bytes: int
    detaching: bool  # a concurrent detach that was interrupted: the next drop finishes it
    detached: bool = False  # a table detached but never dropped (:func:`leftovers`), no longer a partition


def key_events_since(key_id: Any, need: int, reader: Reader = read) -> datetime:
    """A lower bound for reading a key's ``need`` newest raw events: the hour from which its rollup counts that
    many calls. A key page names it in its raw reads so the planner considers only the partitions from there on:
    unbounded, planning alone took 2.3 ms with 98 daily partitions, against 0.2 ms (docs/performance.md).

    Rollups hold every raw event still kept (newer, unfolded calls only raise the count above the bound), so the
    bounded read returns the same rows; a key without rollup rows yet is read without a bound. Pass the
    ``reader`` that reads the raw rows (:func:`~portal.db.read`, the replica when there is one, by default): the
    bound then comes from the same server, so a lagging replica's bound never skips rows it holds."""
    since: datetime | None = reader(KEY_SINCE_SQL, {"key": key_id, "need": need}).scalar()
    return since or EPOCH


def ensure(start: datetime, end: datetime) -> int:
    """Partitions for every UTC day from ``start`` to ``end`` (both included), in the session's transaction;
    returns how many were created. Safe to call from any number of processes at once."""
    return int(db.session.scalar(ENSURE_SQL, {"lo": start, "hi": end}) or 0)


def ensure_ahead(days: int = AHEAD_DAYS, now: datetime | None = None) -> int:
    """Partitions from today to ``days`` days ahead, committed; returns how many were created."""
    now = now or utcnow()
    created = ensure(now, now + timedelta(days=days))
    db.session.commit()
    return created


def listing() -> list[Partition]:
    """Every partition of ``api_key_usage``, oldest first."""
    return _listing(db.session)


def _listing(conn: Any) -> list[Partition]:
    return [Partition(*row) for row in conn.execute(LIST_SQL)]


def leftovers() -> list[Partition]:
    """The tables a prune detached from ``api_key_usage`` but did not drop (its ``DROP`` failed, or the process
    died in between), oldest first: no longer partitions, so :func:`listing` misses them. The next prune drops
    those whose day ends at or before its cutoff; a table renamed to anything but a day's name is left alone."""
    return _leftovers(db.session)


def _leftovers(conn: Any) -> list[Partition]:
    found = []
    for name, rows, size in conn.execute(LEFTOVERS_SQL):
        try:
            start = datetime.strptime(name[-8:], "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue  # eight digits that are no date: not a day's table
        found.append(Partition(name, start, start + timedelta(days=1), rows, size, detaching=False, detached=True))
    return sorted(found, key=lambda p: p.start)


def cutoff_for(older_than: timedelta, now: datetime | None = None) -> datetime:
    if older_than < timedelta(days=1):
        raise ValueError("raw events are kept at least one day (retention drops whole days)")
    return (now or utcnow()) - older_than


def expired(older_than: timedelta, now: datetime | None = None) -> list[Partition]:
    """The partitions that end at or before the cutoff: every row in them is older than ``older_than``."""
    cutoff = cutoff_for(older_than, now)
    return [p for p in listing() if p.end <= cutoff]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def behind_transaction_pooler() -> bool:
    """Whether the app reaches PostgreSQL through a transaction pooler (``DATABASE_POOL_MODE=transaction``),
    where a session setting stays with whichever server connection ran it."""
    return bool(current_app.config.get("DATABASE_POOL_MODE") == pooling.TRANSACTION)


def drop_expired(older_than: timedelta, now: datetime | None = None) -> list[Partition]:
    """Detach and drop every partition older than ``older_than``, and every table an earlier prune detached but
    did not drop whose day is as old (:func:`leftovers`); returns those dropped, oldest first.

    Needs no transaction of its own to be open: the session's is ended first, since a concurrent detach waits
    for every transaction that has used the table.

    - The table's owner, connected to PostgreSQL directly (or through a session pool), detaches ``CONCURRENTLY``:
      inserts and reads go on. That cannot run in a transaction, so its lock timeout can only be a session
      setting: set on the connection first, reset before the connection goes back to the pool.
    - Any other role goes through ``usage_partitions_drop``, which holds ACCESS EXCLUSIVE on the table for the
      moment of the drop and waits for it at most its own ``lock_timeout`` (migration 0024), on any connection.
    - The owner behind a transaction pooler goes through the function too. There the session setting would stay
      with whichever server connection ran it: the detach could run on another one and wait without limit, and
      the setting would reach the pooler's next client on that connection. The function's timeout holds
      wherever it runs; the price is the app role's, ACCESS EXCLUSIVE for the moment of the drop (what a cron job
      as the app role pays anyway). Refusing would stop a daily prune that can run safely; for the concurrent
      detach, connect to PostgreSQL directly (docs/operations.md, "Usage partitions and retention").

    Another prune at the same time is no error. Two prunes as the owner run one after the other (a session advisory
    lock, waited for without a timeout, taken before the partitions are listed): a concurrent detach holds no lock
    between its two transactions, so a second one would find the first's partition "detach pending" and could
    not tell an interrupted detach from one in progress. Through the function, and between the two ways, a
    partition another prune detached or dropped meanwhile is skipped, and is counted by the prune that dropped
    it. A lock timeout still fails the prune (the next one finishes the work)."""
    cutoff = cutoff_for(older_than, now)
    concurrent = bool(db.session.scalar(OWNER_SQL)) and not behind_transaction_pooler()
    db.session.commit()
    dropped: list[Partition] = []
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            if concurrent:
                conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": PRUNE_LOCK})
                conn.execute(sa.text(f"SET lock_timeout = {LOCK_TIMEOUT_MS}"))
            for partition in _listing(conn):
                if partition.end <= cutoff and _drop(conn, partition, cutoff, concurrent):
                    dropped.append(partition)
            # Read after the partitions' turn: what this prune or an earlier one detached and did not drop.
            for partition in _leftovers(conn):
                if partition.end <= cutoff and _drop(conn, partition, cutoff, concurrent):
                    dropped.append(partition)
        finally:
            if concurrent and not conn.invalidated:
                try:
                    conn.execute(sa.text("RESET lock_timeout"))
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": PRUNE_LOCK})
                except sa.exc.DBAPIError:
                    conn.invalidate()  # never leave the pool a connection with the setting or the lock
    return sorted(dropped, key=lambda p: p.start)


def _pgcode(exc: sa.exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


def _drop(conn: sa.Connection, partition: Partition, cutoff: datetime, concurrent: bool) -> bool:
    return _drop_concurrently(conn, partition) if concurrent else _drop_through_function(conn, partition, cutoff)


def _drop_concurrently(conn: sa.Connection, partition: Partition) -> bool:
    """As the table's owner: detach ``partition`` concurrently (or finish its interrupted detach), then drop it;
    a leftover is only dropped. False when another prune detached or dropped it meanwhile."""
    name = _quoted(partition.name)
    if not partition.detached:
        mode = "FINALIZE" if partition.detaching else "CONCURRENTLY"
        try:
            conn.execute(sa.text(f"ALTER TABLE api_key_usage DETACH PARTITION {name} {mode}"))
        except sa.exc.DBAPIError:
            if conn.scalar(ATTACHED_SQL, {"name": partition.name}) is None:
                return False  # detached by another prune (through the function): it dropped it, or leftovers will
            raise
    try:
        conn.execute(sa.text(f"DROP TABLE {name}"))
    except sa.exc.DBAPIError as exc:
        if _pgcode(exc) == UNDEFINED_TABLE:
            return False  # another prune dropped it, as a leftover, between the two
        raise
    return True


def _drop_through_function(conn: sa.Connection, partition: Partition, cutoff: datetime) -> bool:
    """Through ``usage_partitions_drop``; False when another prune detached or dropped it first (the function
    reads the partition again once it holds the lock)."""
    return bool(conn.scalar(DROP_FUNCTION_SQL, {"name": partition.name, "cutoff": cutoff}))
