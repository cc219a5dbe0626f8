"""Usage rows: one per answered verification of an existing key, written in batches off the request path.

Calls with a malformed or unknown key are counted instead (:meth:`BufferedRecorder.count_invalid`): summed in
memory per minute, client address and outcome, and added to ``api_invalid_key_counts`` by the same flush, so
garbage costs at most one row per address and minute however much of it arrives.

Each worker process buffers rows in memory and a writer thread flushes them every ``interval`` seconds (or
sooner when ``batch`` rows wait) as one INSERT of column arrays on its own connection, with
``synchronous_commit`` on, so a flushed row is on disk. ``close()`` stops the thread and flushes the rest; it
runs when a gunicorn worker exits and at interpreter exit, so a clean stop loses nothing. A worker killed with
SIGKILL loses at most ``interval`` seconds of its answered calls (rows the database refuses are kept and
retried). Each flush also updates this process's metrics (portal/metrics.py): the rows still buffered, failed
flushes, and the verifications counted since the last flush. The writer also vacuums the tables verification
churns (docs/performance.md, "Vacuum the churned tables often; fold rarely").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import psycopg2

from portal import metrics
from portal.verification import pooling, sql
from portal.verification.backend import Row

log = logging.getLogger("portal.verification.usage")
MAINTAIN_EVERY = 5.0  # seconds between vacuums of the churned tables, per worker
PRUNE_EVERY = 60.0  # seconds between deletions of finished limiter windows, per worker
# VACUUM's warning when the role may not vacuum a table (PostgreSQL 15; 16 and later say "permission denied").
_NOT_OWNER, _DENIED = "only table or database owner can vacuum", "permission denied to vacuum"


_UUID_CHARS = frozenset("0123456789abcdef-")
# A batch's ids joined by commas: checked in one pass (with the length, which leaves no id holding a comma).
_UUID_LIST = re.compile(r"[0-9a-f-]{36}(?:,[0-9a-f-]{36})*")


def _checked_uuid(value: str) -> str:
    """A uuid from our own statement's ``::text``; still checked, as it is pasted into SQL."""
    if len(value) != 36 or not _UUID_CHARS.issuperset(value):
        raise ValueError(f"not a uuid: {value!r}")
    return value


def _element(value: str | None) -> str:
    """One element of a PostgreSQL array literal: quoted, with ``\\`` and ``"`` escaped; ``NULL`` for None."""
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise ValueError("NUL in a usage row")
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def _uuid_element(value: str | None) -> str:
    return "NULL" if value is None else _checked_uuid(value)


# Rendering a batch is the writer's share of every call's CPU, so each column is joined at once where it can
# be (no NULL, nothing to escape), and element by element only otherwise; both give the same literal.


def _uuid_array(values: Sequence[str | None]) -> str:
    if None not in values:
        joined = ",".join(values)  # type: ignore[arg-type]
        if len(joined) == 37 * len(values) - 1 and _UUID_LIST.fullmatch(joined):
            return "{" + joined + "}"
    return "{" + ",".join(map(_uuid_element, values)) + "}"


def _text_array(values: Sequence[str | None]) -> str:
    if None not in values:
        plain = "".join(values)  # type: ignore[arg-type]
        if '"' not in plain and "\\" not in plain and "\x00" not in plain:
            return '{"' + '","'.join(values) + '"}'  # type: ignore[arg-type]
    return "{" + ",".join(map(_element, values)) + "}"


def _float_array(values: Sequence[float | None]) -> str:
    if None in values:
        return "{" + ",".join("NULL" if ms is None else repr(float(ms)) for ms in values) + "}"
    return "{" + ",".join(map(repr, map(float, values))) + "}"  # type: ignore[arg-type]


def usage_arrays(rows: Sequence[Row]) -> tuple[tuple[str, ...], list[str]]:
    """The rows as one array literal per column, the parameters of :data:`portal.verification.sql.INSERT_USAGE`,
    and each row's time as ISO text (what the key touches reuse).

    One statement with nine text parameters, whatever the batch size: PostgreSQL parses each array once
    instead of a statement with thousands of literals, and rendering costs the writer about what a ``COPY``
    line does. ``COPY`` itself is not an option: psycopg2 refuses it on the cooperative (gevent) connections
    the workers use.
    """
    key_ids, org_ids, ats, endpoints, statuses, latencies, outcomes, ips, agents = zip(*rows, strict=True)
    stamps = [at.isoformat() for at in ats]
    arrays = (
        _uuid_array(key_ids),
        _uuid_array(org_ids),
        '{"' + '","'.join(stamps) + '"}',
        _text_array(endpoints),
        "{" + ",".join(map(str, map(int, statuses))) + "}",
        _float_array(latencies),
        _text_array(outcomes),
        _text_array(ips),
        _text_array(agents),
    )
    return arrays, stamps


def write_usage_rows(cursor: Any, rows: Sequence[Row]) -> None:
    """The usage rows in one ``INSERT`` (statement-level triggers run once per batch), then ``last_used_at``
    of their keys (once a minute at most)."""
    if not rows:
        return
    arrays, stamps = usage_arrays(rows)  # checks every key id: they are pasted below
    latest: dict[str, tuple[datetime, str]] = {}
    for row, stamp in zip(rows, stamps, strict=True):
        key_id, occurred_at = row[0], row[2]
        if key_id is not None:
            seen = latest.get(key_id)
            if seen is None or occurred_at > seen[0]:
                latest[key_id] = (occurred_at, stamp)
    cursor.execute(sql.INSERT_USAGE, arrays)
    if latest:
        touches = ",".join(
            f"('{key_id}'::uuid,'{stamp}'::timestamptz)" for key_id, (_, stamp) in sorted(latest.items())
        )
        cursor.execute(sql.TOUCH_KEYS_PREFIX + touches + sql.TOUCH_KEYS_SUFFIX)


InvalidKeyCounts = dict[tuple[datetime, str | None, str], int]  # (minute, client address, outcome) -> calls


def write_invalid_key_counts(cursor: Any, counts: InvalidKeyCounts) -> None:
    """Add ``counts`` to ``api_invalid_key_counts`` in one upsert (the rows locked in one order)."""
    if not counts:
        return
    keys = sorted(counts, key=lambda k: (k[0], k[1] is None, k[1] or "", k[2]))
    cursor.execute(
        sql.UPSERT_INVALID_KEY_COUNTS,
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [counts[k] for k in keys]),
    )


class UsageRecorder(Protocol):
    def add(self, row: Row) -> None: ...

    def count_invalid(self, at: datetime, address: str | None, outcome: str) -> None: ...

    def flush(self) -> int: ...

    def close(self) -> None: ...


class BufferedRecorder:
    """Buffers rows per process; a writer thread flushes them in batches on its own connection."""

    def __init__(
        self,
        dsn: str,
        *,
        interval: float = 0.2,
        batch: int = 500,
        close_timeout: float = 10.0,
        maintain_every: float = MAINTAIN_EVERY,
        pool_mode: str = pooling.SESSION,
    ) -> None:
        self.dsn = dsn
        # Behind a transaction pooler nothing is kept in the session: settings per transaction, no session lock.
        self._per_transaction = pool_mode == pooling.TRANSACTION
        self.interval = interval
        self.maintain_every = maintain_every
        self._vacuum = True  # turned off if this role cannot vacuum the churned tables
        self.batch = batch
        self.close_timeout = close_timeout
        self.written = 0
        self.dropped = 0
        self.counted = 0  # invalid-key calls whose counts were written
        self._rows: list[Row] = []
        self._counts: InvalidKeyCounts = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._conn: Any = None
        # Written on every flush besides the rows, never failing it: the /v1 request lines (portal/logs.py).
        self.companions: list[Callable[[], object]] = []

    def add(self, row: Row) -> None:
        with self._lock:
            self._rows.append(row)
            waiting = len(self._rows)
        if self._pid != os.getpid():
            self._start()
        if waiting >= self.batch:
            self._wake.set()

    def count_invalid(self, at: datetime, address: str | None, outcome: str) -> None:
        """Count one call with a malformed or unknown key (or refused for too many) in ``at``'s minute."""
        key = (at.replace(second=0, microsecond=0), address, outcome)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            waiting = len(self._counts)
        if self._pid != os.getpid():
            self._start()
        if waiting >= self.batch:  # many addresses at once: flush early, so memory stays bounded
            self._wake.set()

    def pending(self) -> int:
        """Usage rows and invalid-key calls not written yet."""
        with self._lock:
            return len(self._rows) + sum(self._counts.values())

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # After a fork the parent's thread and connection are not ours: start afresh.
            self._pid = os.getpid()
            self._conn = None
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_maintain = time.monotonic() + self.maintain_every
        next_prune = time.monotonic() + PRUNE_EVERY
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
                now = time.monotonic()
                if now >= next_maintain:
                    prune = now >= next_prune
                    next_prune = now + PRUNE_EVERY if prune else next_prune
                    try:
                        self.maintain(prune=prune)
                    finally:  # counted from the end: a slow or failing vacuum is not rerun at once
                        next_maintain = time.monotonic() + self.maintain_every
            except Exception:  # noqa: BLE001 - the writer must survive anything; rows stay buffered
                log.exception("usage writer failed; %d rows kept for the next attempt", self.pending())
                self.report()
                time.sleep(min(1.0, self.interval * 5))
            else:
                self.report()

    def report(self) -> None:
        """Fold this process's verification counts into the metrics and set its buffered rows."""
        try:
            metrics.verification_tally.fold()
            metrics.USAGE_ROWS_BUFFERED.set(self.pending())
        except Exception:  # noqa: BLE001 - metrics never stop the writer
            log.exception("usage writer: updating the metrics failed")

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            if not self._per_transaction:
                with self._conn.cursor() as cur:
                    cur.execute("SET TimeZone = 'UTC'; SET standard_conforming_strings = on")
                self._conn.commit()
        return self._conn

    def _begin(self, cur: Any) -> None:
        """Start a transaction of the writer: behind a transaction pooler, with its settings."""
        if self._per_transaction:
            cur.execute(pooling.WRITER_SETTINGS_SQL)

    def connect(self) -> Any:
        """A new psycopg2 connection for the writer."""
        return psycopg2.connect(self.dsn, application_name="procode-usage-writer")

    def flush(self) -> int:
        """Write every buffered row and count (put back on failure); returns how many usage rows were written."""
        for companion in self.companions:
            try:
                companion()
            except Exception:  # noqa: BLE001 - a log write never costs a usage row
                log.exception("usage writer: %r failed", companion)
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                counts, self._counts = self._counts, {}
            if not rows and not counts:
                return 0
            try:
                self._write(rows, counts)
            except BaseException:
                with self._lock:
                    self._rows[:0] = rows
                    for key, calls in counts.items():
                        self._counts[key] = self._counts.get(key, 0) + calls
                self._reset_connection()
                with contextlib.suppress(Exception):
                    metrics.USAGE_FLUSH_FAILURES.inc()
                raise
            self.written += len(rows)
            self.counted += sum(counts.values())
            return len(rows)

    def _reset_connection(self) -> None:
        """Close the writer's connection after a failure; the next flush or maintenance opens a fresh one."""
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

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

    def maintain(self, *, prune: bool = False) -> bool:
        """Vacuum the tables verification churns (after pruning finished limiter windows, if ``prune``).

        Each flush appends pending rollup sums that a fold later deletes, so ``usage_rollup_pending`` turns
        over about one row per call; a vacuum every few seconds lets PostgreSQL reuse that space even where
        autovacuum is off or behind. It never truncates (that needs an exclusive lock the verifications would
        queue behind), only one worker vacuums at a time (advisory lock), and a role that does not own the
        tables turns it off with one log line. Returns whether it vacuumed.

        Behind a transaction pooler the lock would stay with whichever server connection took it, so the tables
        are vacuumed instead when none was vacuumed in the last ``maintain_every`` seconds (by any worker or by
        autovacuum); two workers that find them due at once skip each other's tables (``SKIP_LOCKED``).
        """
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

    def _write(self, rows: Sequence[Row], counts: InvalidKeyCounts) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                self._begin(cur)
                for start in range(0, len(rows), self.batch):
                    write_usage_rows(cur, rows[start : start + self.batch])
                write_invalid_key_counts(cur, counts)
            conn.commit()
        except (psycopg2.DataError, psycopg2.IntegrityError):
            conn.rollback()
            self._write_each(conn, rows, counts)

    def _write_each(self, conn: Any, rows: Sequence[Row], counts: InvalidKeyCounts) -> None:
        """A row the database refuses must not block the others forever: write row by row, log the refused."""
        refused = 0
        with conn.cursor() as cur:
            self._begin(cur)
            for key, calls in counts.items():
                cur.execute("SAVEPOINT usage_row")
                try:
                    write_invalid_key_counts(cur, {key: calls})
                except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT usage_row")
                    log.error("invalid-key count refused by the database and dropped: %r (%s)", key, exc)
            for row in rows:
                cur.execute("SAVEPOINT usage_row")
                try:
                    write_usage_rows(cur, [row])
                except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT usage_row")
                    refused += 1
                    log.error("usage row refused by the database and dropped: %r (%s)", row, exc)
        conn.commit()
        self.dropped += refused

    def close(self) -> None:
        """Stop the writer, flush what is left (retrying up to ``close_timeout``): a clean stop loses none."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(self.close_timeout)
        deadline = time.monotonic() + self.close_timeout
        while True:
            try:
                self.flush()
                break
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() > deadline:
                    log.error("usage flush at shutdown failed, %d rows lost: %s", self.pending(), exc)
                    break
                time.sleep(0.2)
        self.report()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pid = 0
