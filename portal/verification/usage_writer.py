"""Usage rows: one per answered verification of an existing key, written in batches off the request path.

Calls with a malformed or unknown key are counted instead (:meth:`BufferedRecorder.count_invalid`): summed in
memory per minute, client address and outcome, and added to ``api_invalid_key_counts`` by the same flush, so
garbage costs at most one row per address and minute however much of it arrives.

Each worker process buffers rows in memory and a writer thread flushes them every ``interval`` seconds (or
sooner when ``batch`` rows wait) as one INSERT of column arrays on its own connection, with
``synchronous_commit`` on, so a flushed row is on disk. ``close()`` stops the thread and flushes the rest; it
runs when a gunicorn worker exits and at interpreter exit. What the database does not take within
``close_timeout`` (it is down, or hung) goes to a spill file that the next worker writes
(:mod:`portal.verification.spill`), so a clean stop loses nothing, even during an outage. A worker killed with
SIGKILL loses at most ``interval`` seconds of its answered calls (rows the database refuses are kept and
retried). Each flush also updates this process's metrics (portal/metrics.py): the rows still buffered, failed
flushes, and the verifications counted since the last flush. The writer also vacuums the tables verification
churns (docs/performance.md, "Vacuum the churned tables often; fold rarely"), and keeps the usage table's
daily partitions ``partitions_ahead`` days ahead (checked at its first maintenance and hourly after that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg2

from portal import metrics
from portal.verification import pooling, spill
from portal.verification.backend import Row
from portal.verification.maintenance import PARTITIONS_EVERY, PARTITIONS_RETRY, PRUNE_EVERY, WriterMaintenance
from portal.verification.usage_rows import (
    InvalidKeyCounts,
    no_partition,
    row_days,
    write_each,
    write_invalid_key_counts,
    write_usage_rows,
)

log = logging.getLogger("portal.verification.usage")
MAINTAIN_EVERY = 5.0  # seconds between vacuums of the churned tables (and looks for spill files), per worker
# Seconds a stopping worker gives its last flush before spilling: well inside gunicorn's graceful timeout (30 s),
# which also has to cover the requests still being answered.
CLOSE_TIMEOUT = 3.0
CURRENT_XID_SQL = "SELECT txid_current()"


class UsageRecorder(Protocol):
    def add(self, row: Row) -> None: ...

    def count_invalid(self, at: datetime, address: str | None, outcome: str) -> None: ...

    def flush(self) -> int: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class _Abandoned(Exception):
    """The recorder was closed while this batch was being written: the closer has spilled it, so it must not
    commit (it could be written twice) nor go back to the buffer."""


class _InFlight:
    """A batch being written: its rows, its transaction's id once known, and whether its COMMIT was sent."""

    __slots__ = ("committing", "counts", "rows", "xid")

    def __init__(self, rows: list[Row], counts: InvalidKeyCounts) -> None:
        self.rows, self.counts = rows, counts
        self.xid: int | None = None
        self.committing = False


class BufferedRecorder(WriterMaintenance):
    """Buffers rows per process; a writer thread flushes them in batches on its own connection.

    ``spill_dir`` is where :meth:`close` writes what the database did not take in time (and a batch whose commit
    was in doubt), for :mod:`portal.verification.spill` to write later; the writer replays the files it finds
    there at its start and every ``maintain_every`` seconds. ``None``: nowhere (those rows are lost, logged).
    """

    def __init__(
        self,
        dsn: str,
        *,
        interval: float = 0.2,
        batch: int = 500,
        close_timeout: float = CLOSE_TIMEOUT,
        maintain_every: float = MAINTAIN_EVERY,
        spill_dir: Path | None = None,
        pool_mode: str = pooling.SESSION,
        partitions_ahead: int = 7,
    ) -> None:
        self.dsn = dsn
        # Behind a transaction pooler nothing is kept in the session: settings per transaction, no session lock.
        self._per_transaction = pool_mode == pooling.TRANSACTION
        self.interval = interval
        self.maintain_every = maintain_every
        self.partitions_ahead = partitions_ahead
        self._vacuum = True  # turned off if this role cannot vacuum the churned tables
        self.batch = batch
        self.close_timeout = close_timeout
        self.spill_dir = spill_dir
        self.written = 0
        self.dropped = 0
        self.counted = 0  # invalid-key calls whose counts were written
        self.spilled = 0  # usage rows written to spill files
        self._rows: list[Row] = []
        self._counts: InvalidKeyCounts = {}
        self._lock = threading.Lock()  # the buffer, the batch in flight, and whether it may still commit
        self._inflight: _InFlight | None = None
        self._abandoned = False  # closed: nothing may commit or return to the buffer any more
        self._closed = False
        self._stop_by = 0.0  # monotonic time by which a stopping writer gives up its last flush
        self._last_error = ""
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

    def start(self) -> None:
        """Start the writer now rather than at the first call (gunicorn's ``post_worker_init``): a new worker
        writes the spill files its predecessors left even before it answers anything."""
        if self._pid != os.getpid():
            self._start()

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
        next_replay = time.monotonic()
        next_partitions = 0.0  # at the first maintenance
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break  # straight to the last flush: no maintenance while the worker stops
            try:
                self.flush()
                now = time.monotonic()
                if now >= next_replay:
                    next_replay = now + self.maintain_every
                    self.replay_spills()
                if now >= next_maintain:
                    prune = now >= next_prune
                    next_prune = now + PRUNE_EVERY if prune else next_prune
                    partitions = now >= next_partitions
                    if partitions:
                        next_partitions = now + PARTITIONS_RETRY
                    try:
                        if self.maintain(prune=prune, partitions=partitions) is not None and partitions:
                            next_partitions = now + PARTITIONS_EVERY
                    finally:  # counted from the end: a slow or failing vacuum is not rerun at once
                        next_maintain = time.monotonic() + self.maintain_every
            except _Abandoned:
                return  # closed while this flush waited on the database: its rows are in a spill file
            except Exception:  # noqa: BLE001 - the writer must survive anything; rows stay buffered
                log.exception("usage writer failed; %d rows kept for the next attempt", self.pending())
                self.report()
                time.sleep(min(1.0, self.interval * 5))
            else:
                self.report()
        self._last_flushes()

    def _last_flushes(self) -> None:
        """The stopping writer's last flush, tried again until :meth:`close`'s time is up."""
        while True:
            try:
                self.flush()
                return
            except _Abandoned:
                return
            except Exception as exc:  # noqa: BLE001 - what is left goes to a spill file
                self._last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if time.monotonic() + 0.2 >= self._stop_by:
                    return
                time.sleep(0.2)

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
        self._write_companions()
        with self._flush_lock:
            with self._lock:
                if self._abandoned or (not self._rows and not self._counts):
                    return 0
                flight = self._inflight = _InFlight(self._rows, self._counts)
                self._rows, self._counts = [], {}
            try:
                self._write(flight)
            except BaseException as exc:
                self._failed(flight, exc)
                self._reset_connection()
                with contextlib.suppress(Exception):
                    metrics.USAGE_FLUSH_FAILURES.inc()
                raise
            with self._lock:
                self._inflight = None
            self.written += len(flight.rows)
            self.counted += sum(flight.counts.values())
            return len(flight.rows)

    def _write_companions(self) -> None:
        for companion in self.companions:
            try:
                companion()
            except Exception:  # noqa: BLE001 - a log write never costs a usage row
                log.exception("usage writer: %r failed", companion)

    def _failed(self, flight: _InFlight, exc: BaseException) -> None:
        """A batch that was not written goes back to the buffer; one whose COMMIT was sent and its answer lost
        (only the database knows whether it was written) goes to a spill file, which settles it exactly once.
        Decided under the lock :meth:`close` takes, so a batch is never both in the buffer and in flight."""
        with self._lock:
            self._inflight = None
            if self._abandoned:
                return  # closed meanwhile: the closer spilled it
            in_doubt = flight.committing and getattr(exc, "pgcode", None) is None
            if not in_doubt or self.spill_dir is None:
                self._rows[:0] = flight.rows
                for key, calls in flight.counts.items():
                    self._counts[key] = self._counts.get(key, 0) + calls
                return
        self._spill([spill.Batch(flight.rows, flight.counts, flight.xid)], "the answer to a commit was lost")

    def _reset_connection(self) -> None:
        """Close the writer's connection after a failure; the next flush or maintenance opens a fresh one."""
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def _write(self, flight: _InFlight, retry: bool = True) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                self._begin(cur)
                cur.execute(CURRENT_XID_SQL)  # what decides later whether a commit whose answer was lost happened
                flight.xid = int(cur.fetchone()[0])
                for start in range(0, len(flight.rows), self.batch):
                    write_usage_rows(cur, flight.rows[start : start + self.batch])
                write_invalid_key_counts(cur, flight.counts)
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            conn.rollback()
            if retry and no_partition(exc):
                created = self._ensure(conn, row_days(flight.rows))
                log.warning("usage writer: a batch found no usage partition; made %d and wrote it again", created)
                self._write(flight, retry=False)
                return
            # A row the database refuses must not block the others forever: row by row, the refused logged.
            with conn.cursor() as cur:
                self._begin(cur)
                cur.execute(CURRENT_XID_SQL)
                flight.xid = int(cur.fetchone()[0])
                refused = write_each(cur, flight.rows, flight.counts)
            self._commit(conn, flight)
            self.dropped += refused
            return
        self._commit(conn, flight)

    def _commit(self, conn: Any, flight: _InFlight) -> None:
        with self._lock:
            if self._abandoned:
                raise _Abandoned
            flight.committing = True
        conn.commit()

    def close(self) -> None:
        """Stop the writer and write what is left, for at most ``close_timeout`` seconds; what the database has not
        taken by then goes to a spill file: a clean stop loses nothing, and stays well inside gunicorn's graceful
        timeout. A second call (``atexit`` after gunicorn's ``worker_exit``) does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stop_by = time.monotonic() + self.close_timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread if self._pid == os.getpid() else None
        if (thread is None or not thread.is_alive()) and self.pending():
            # No writer (never started in this process): the last flush still gets a thread of its own, so a hung
            # database cannot hold the caller past the timeout.
            thread = threading.Thread(target=self._last_flushes, name="usage-writer-close", daemon=True)
            thread.start()
        stuck = False
        if thread is threading.current_thread():
            self._last_flushes()
        elif thread is not None and thread.is_alive():
            thread.join(max(0.0, self._stop_by - time.monotonic()) + 0.5)
            stuck = thread.is_alive()  # waiting on a database that does not answer
        if stuck:
            self._write_companions()  # the request lines, which the stuck writer cannot write either
        with self._lock:
            self._abandoned = True  # from here on, nothing commits: whatever is left is the spill's
            flight, rows, counts = self._inflight, self._rows, self._counts
            self._rows, self._counts = [], {}
        batches = [spill.Batch(rows, counts)] if rows or counts else []
        if flight is not None:  # a stuck writer's batch: written only if its transaction did not commit
            batches.insert(0, spill.Batch(flight.rows, flight.counts, flight.xid if flight.committing else None))
        if batches:
            self._spill(batches, self._last_error or "no answer from the database", at_shutdown=True)
        self.report()
        if self._conn is not None and not stuck:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None
        self._pid = 0

    def _spill(self, batches: list[spill.Batch], reason: str, *, at_shutdown: bool = False) -> None:
        what = "usage flush at shutdown failed" if at_shutdown else "usage flush in doubt"
        if spill.keep(self.spill_dir, batches, f"{what} ({reason})"):
            self.spilled += sum(len(batch.rows) for batch in batches)
