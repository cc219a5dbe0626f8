"""What a usage writer does besides writing rows, between flushes and on its own connection: delete the limiter's
finished windows, replay spill files, keep the usage table's daily partitions ahead, vacuum the churned tables.

A mixin of :class:`portal.verification.usage_writer.BufferedRecorder`, which owns the connection and the lock
that keeps these off a flush in progress.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

from portal.verification import pooling, spill, sql
from portal.verification.usage_rows import make_partitions

log = logging.getLogger("portal.verification.usage")
PRUNE_EVERY = 60.0  # seconds between deletions of finished limiter windows, per worker
PARTITIONS_EVERY = 3600.0  # seconds between checks that the next days' usage partitions exist, per worker
PARTITIONS_RETRY = 60.0  # seconds before another try after a check that failed
# VACUUM's warning when the role may not vacuum a table (PostgreSQL 15; 16 and later say "permission denied").
_NOT_OWNER, _DENIED = "only table or database owner can vacuum", "permission denied to vacuum"


class WriterMaintenance:
    """The writer's upkeep; each step takes the flush lock and the writer's connection, and leaves no transaction
    open behind it (a failure closes the connection, so the next flush starts clean)."""

    maintain_every: float
    partitions_ahead: int
    spill_dir: Path | None
    _vacuum: bool  # turned off if this role cannot vacuum the churned tables
    _per_transaction: bool  # behind a transaction pooler
    _flush_lock: threading.Lock
    _conn: Any

    def _connection(self) -> Any:
        raise NotImplementedError

    def _reset_connection(self) -> None:
        raise NotImplementedError

    def _begin(self, cur: Any) -> None:
        raise NotImplementedError

    def prune(self) -> int:
        """Delete the API limiter's finished windows: the table stays small without a cron job."""
        with self._flush_lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    self._begin(cur)
                    cur.execute(sql.PRUNE_API_WINDOWS_SQL)
                    deleted = int(cur.rowcount)
                conn.commit()
            except BaseException:
                self._reset_connection()  # never leave the flushes an aborted transaction
                raise
            return deleted

    def replay_spills(self) -> spill.Replayed | None:
        """Write the spill files waiting in the spill folder, if any (one directory listing when there are none)."""
        if self.spill_dir is None or not spill.pending(self.spill_dir):
            return None
        with self._flush_lock:
            conn = self._connection()
            try:
                return spill.replay(conn, self.spill_dir)
            except BaseException:
                self._reset_connection()
                raise

    def ensure_partitions(self) -> int | None:
        """Make the usage table's daily partitions from today to ``partitions_ahead`` days ahead (those missing);
        returns how many were made, or None when it failed (logged: the next flush or check tries again)."""
        with self._flush_lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT now()")
                    now = cur.fetchone()[0]
                created = self._ensure(conn, [(now, now + timedelta(days=self.partitions_ahead))])
            except psycopg2.Error as exc:
                self._reset_connection()
                log.error("usage writer: could not make the next days' usage partitions: %s", exc)
                return None
        if created:
            log.info("usage writer: made %d usage partitions (up to %d days ahead)", created, self.partitions_ahead)
        return created

    def _ensure(self, conn: Any, spans: Sequence[tuple[datetime, datetime]]) -> int:
        """The partitions covering each ``(lo, hi)`` of ``spans`` (in the transaction open on ``conn``, if any),
        committed: how many were made."""
        with conn.cursor() as cur:
            self._begin(cur)
            cur.execute(sql.PARTITION_LOCK_TIMEOUT_SQL)
            created = make_partitions(cur, spans)
        conn.commit()
        return created

    def maintain(self, *, prune: bool = False, partitions: bool = False) -> bool | None:
        """Vacuum the tables verification churns (after pruning finished limiter windows, if ``prune``, and
        making the next days' usage partitions, if ``partitions``: None when that failed).

        Each flush appends pending rollup sums that a fold later deletes, so ``usage_rollup_pending`` turns
        over about one row per call; a vacuum every few seconds lets PostgreSQL reuse that space even where
        autovacuum is off or behind. It never truncates (that needs an exclusive lock the verifications would
        queue behind), only one worker vacuums at a time (advisory lock), and a role that does not own the
        tables turns it off with one log line. Returns whether it vacuumed.

        Behind a transaction pooler the lock would stay with whichever server connection took it, so the tables
        are vacuumed instead when none was vacuumed in the last ``maintain_every`` seconds (by any worker or by
        autovacuum); two workers that find them due at once skip each other's tables (``SKIP_LOCKED``).
        """
        if partitions and self.ensure_partitions() is None:
            return None
        if prune:
            self.prune()
        if not self._vacuum:
            return False
        with self._flush_lock:
            conn = self._connection()
            try:
                conn.autocommit = True  # VACUUM cannot run inside a transaction
                with conn.cursor() as cur:
                    if self._per_transaction:
                        cur.execute(pooling.VACUUM_DUE_SQL, (self.maintain_every, list(sql.HOT_TABLES)))
                    else:
                        cur.execute(sql.TRY_VACUUM_LOCK_SQL)
                    if not cur.fetchone()[0]:
                        return False
                    try:
                        del conn.notices[:]
                        cur.execute(sql.VACUUM_HOT_TABLES_SQL)
                    finally:
                        if not self._per_transaction:
                            cur.execute(sql.VACUUM_UNLOCK_SQL)
                if any(_NOT_OWNER in notice or _DENIED in notice for notice in conn.notices):
                    self._vacuum = False
                    log.warning("usage writer: not the owner of %s, leaving them to autovacuum", sql.HOT_TABLES)
                    return False
                return True
            except BaseException:
                self._reset_connection()
                raise
            finally:
                if self._conn is not None and not conn.closed:
                    conn.autocommit = False
