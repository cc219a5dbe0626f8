"""Daily partitions of ``api_key_usage``: made ahead of the calls that land in them, dropped whole once expired.

A partition is one UTC day (why a day: docs/performance.md, "Partitions of one day"), named
``api_key_usage_pYYYYMMDD``. They are made by the database function ``usage_partitions_ensure`` (migration
0022), which every caller shares: the usage writers ahead of time and on a write that finds none, ``flask usage
partitions create``, the traffic simulator. Retention drops the partitions that end before the cutoff: no row is
deleted one by one, so nothing is left for vacuum. A role that owns the table detaches them ``CONCURRENTLY``
(inserts and reads go on); any other role goes through ``usage_partitions_drop``, which holds ACCESS EXCLUSIVE
on the table for the moment of the drop (docs/operations.md, "Usage partitions").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.db import Reader, read
from portal.extensions import db
from portal.timeutil import utcnow

AHEAD_DAYS = 7  # default for USAGE_PARTITIONS_AHEAD_DAYS
LOCK_TIMEOUT_MS = 10_000  # a drop waits this long for the table's readers and writers, then gives up

ENSURE_SQL = sa.text("SELECT usage_partitions_ensure(:lo, :hi)")
LIST_SQL = sa.text(r"""
SELECT c.relname,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz,
       c.reltuples::bigint, pg_total_relation_size(c.oid), i.inhdetachpending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'api_key_usage'::regclass
ORDER BY 2
""")
OWNER_SQL = sa.text("SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = 'api_key_usage'::regclass")
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
    return [Partition(*row) for row in db.session.execute(LIST_SQL)]


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


def drop_expired(older_than: timedelta, now: datetime | None = None) -> list[Partition]:
    """Detach and drop every partition older than ``older_than``; returns those dropped, oldest first.

    Needs no transaction of its own to be open: the session's is ended first, since a concurrent detach waits
    for every transaction that has used the table."""
    cutoff = cutoff_for(older_than, now)
    victims = [p for p in listing() if p.end <= cutoff]
    owner = bool(db.session.scalar(OWNER_SQL))
    db.session.commit()
    dropped = []
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"SET lock_timeout = {LOCK_TIMEOUT_MS}"))
        for partition in victims:
            name = _quoted(partition.name)
            if owner:
                mode = "FINALIZE" if partition.detaching else "CONCURRENTLY"
                conn.execute(sa.text(f"ALTER TABLE api_key_usage DETACH PARTITION {name} {mode}"))
                conn.execute(sa.text(f"DROP TABLE {name}"))
            elif not conn.scalar(
                sa.text("SELECT usage_partitions_drop(:name, :cutoff)"), {"name": partition.name, "cutoff": cutoff}
            ):
                continue
            dropped.append(partition)
    return dropped
