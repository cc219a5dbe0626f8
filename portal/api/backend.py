"""Where the verification statement runs: a per-process autocommit connection, or the request's session.

``direct`` (production): each worker process keeps one psycopg2 connection in autocommit mode, with the
statements prepared once, so a verification is exactly one round trip (no BEGIN/COMMIT, no pool pre-ping). It
runs with ``synchronous_commit = off``: the limiter's row lock is released as soon as the commit is in the WAL
buffer instead of after the disk flush, which is what lets one organization's counter row take thousands of
updates a second. ``session`` (tests): the statement runs on the Flask-SQLAlchemy session's connection, so it
joins the test's rolled-back transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg2
import sqlalchemy as sa
from psycopg2.errors import InvalidSqlStatementName, QueryCanceled

from portal import green
from portal.api import sql
from portal.extensions import db

log = logging.getLogger("portal.api")

Row = tuple[Any, ...]


class DatabaseUnavailable(Exception):
    """The verification could not reach PostgreSQL; answered 503, never recorded as a verification."""


class Backend(Protocol):
    def verify(self, key_hash: bytes) -> Row | None: ...

    def close(self) -> None: ...


def libpq_dsn(sqlalchemy_url: str) -> str:
    """The app's SQLAlchemy URL as a libpq connection URI."""
    return sa.make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


_UUID_CHARS = frozenset("0123456789abcdef-")


def _checked_uuid(value: str) -> str:
    """A uuid from our own statement's ``::text``; still checked, as it is pasted into SQL."""
    if len(value) != 36 or not _UUID_CHARS.issuperset(value):
        raise ValueError(f"not a uuid: {value!r}")
    return value


def _uuid(value: str | None) -> str:
    return "NULL" if value is None else f"'{_checked_uuid(value)}'::uuid"


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


def usage_arrays(rows: Sequence[Row]) -> tuple[str, ...]:
    """The rows as one array literal per column, the parameters of :data:`portal.api.sql.INSERT_USAGE`.

    One statement with seven text parameters, whatever the batch size: PostgreSQL parses each array once
    instead of a statement with thousands of literals, and rendering costs the writer about what a ``COPY``
    line does. ``COPY`` itself is not an option: psycopg2 refuses it on the cooperative (gevent) connections
    the workers use.
    """
    key_ids, org_ids, ats, endpoints, statuses, latencies, outcomes = zip(*rows, strict=True)
    return (
        "{" + ",".join(map(_uuid_element, key_ids)) + "}",
        "{" + ",".join(map(_uuid_element, org_ids)) + "}",
        "{" + ",".join(f'"{at.isoformat()}"' for at in ats) + "}",
        "{" + ",".join(map(_element, endpoints)) + "}",
        "{" + ",".join(str(int(status)) for status in statuses) + "}",
        "{" + ",".join("NULL" if ms is None else repr(float(ms)) for ms in latencies) + "}",
        "{" + ",".join(map(_element, outcomes)) + "}",
    )


def write_usage_rows(cursor: Any, rows: Sequence[Row]) -> None:
    """The usage rows in one ``INSERT`` (statement-level triggers run once per batch), then ``last_used_at``
    of their keys (once a minute at most)."""
    if not rows:
        return
    latest: dict[str, Any] = {}
    for row in rows:
        key_id, occurred_at = row[0], row[2]
        if key_id is not None and (key_id not in latest or occurred_at > latest[key_id]):
            latest[key_id] = occurred_at
    cursor.execute(sql.INSERT_USAGE, usage_arrays(rows))
    if latest:
        touches = ",".join(
            f"({_uuid(key_id)},'{at.isoformat()}'::timestamptz)" for key_id, at in sorted(latest.items())
        )
        cursor.execute(sql.TOUCH_KEYS_PREFIX + touches + sql.TOUCH_KEYS_SUFFIX)


class _Call:
    """One verification waiting in a worker's queue: its key hash, then its row (or error) when done."""

    __slots__ = ("done", "error", "event", "key_hash", "row")

    def __init__(self, key_hash: bytes) -> None:
        self.key_hash = key_hash
        self.event = threading.Event()
        self.done = False
        self.row: Row | None = None
        self.error: BaseException | None = None


class DirectBackend:
    """One autocommit connection per process with the verification prepared; reconnects after a failure.

    Concurrent verifications of one process are grouped: the first call to arrive (a thread under gthread, a
    greenlet under gevent) becomes the leader and runs the statement for every call queued at that moment
    (itself included), in ONE grouped statement (:func:`portal.api.sql.verify_group_statement`), while the
    calls arriving meanwhile queue; when it is done it hands the queue to the first of them, the next leader.
    A lone call runs at once, alone, with the single-call statement: no added latency. Grouping saves
    PostgreSQL a statement, a commit and a counter update per call (≈ 100 µs of backend CPU for one call
    against ≈ 30 µs per call in groups of 8), and the worker a round trip. There is one leader at a time, so
    one connection serves the whole process (a second leader with its own connection was measured: slower at
    full load, no better at half load).
    """

    def __init__(self, dsn: str, *, max_group: int = 64, timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.max_group = max_group
        self.timeout = timeout  # seconds a verification statement may take before the call answers 503
        self.groups = 0  # statements run for more than one call (observability and tests)
        self.grouped_calls = 0
        self._cur: Any = None  # the leader's prepared cursor, opened on first use in this process
        self._pid = 0
        self._queue_lock = threading.Lock()
        self._queue: list[_Call] = []
        self._leading = False  # a leader is running a statement; invariant: not leading => queue empty

    def _cursor(self) -> Any:
        cur = self._cur
        if cur is None or cur.closed or self._pid != os.getpid():
            conn = psycopg2.connect(self.dsn, application_name="procode-verify")
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("SET TimeZone = 'UTC'")
            cur.execute("SET synchronous_commit = off")
            # PostgreSQL would otherwise plan both statements afresh on every execution (their custom plans
            # look cheaper than the generic one, so it never switches): planning cost more than running them.
            # The generic plans use the same indexes (key hash, organization, counter row).
            cur.execute("SET plan_cache_mode = force_generic_plan")
            # A statement stuck on a lock or an overloaded server gives up (503) instead of holding the queue.
            cur.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
            cur.execute(sql.PREPARE_SQL)
            cur.execute(sql.PREPARE_GROUP_SQL)
            self._cur, self._pid = cur, os.getpid()
        return cur

    def _drop(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None and self._pid == os.getpid():
            with contextlib.suppress(psycopg2.Error):
                cur.connection.close()

    def verify(self, key_hash: bytes) -> Row | None:
        call = _Call(key_hash)
        with self._queue_lock:
            self._queue.append(call)
            lead, self._leading = not self._leading, True
        if not lead:
            try:
                call.event.wait()  # set when the call is answered, or when it is to lead the next group
            except BaseException:  # the waiting greenlet was killed or timed out
                self._abandon(call)
                raise
        if not call.done:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.row

    def _abandon(self, call: _Call) -> None:
        """An interrupted waiting call leaves the queue, passing the lead on if it had just been handed to it:
        otherwise no one would lead again and every later call of the process would wait forever."""
        with self._queue_lock:
            if call not in self._queue:
                return  # already in the group being run: its leader answers it, and nobody waits on it
            handed_the_lead = self._queue[0] is call and call.event.is_set()
            self._queue.remove(call)
            if handed_the_lead:
                if self._queue:
                    self._queue[0].event.set()
                else:
                    self._leading = False

    def _lead(self) -> None:
        """Run the queued calls (this thread's one among them) as one group, then pass the lead on."""
        with self._queue_lock:
            group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
        try:
            rows = self.verify_many([call.key_hash for call in group])
            for call, row in zip(group, rows, strict=True):
                call.row = row
        except BaseException as exc:  # every waiting call must be woken, whatever happened
            for call in group:
                call.error = exc
        finally:
            with self._queue_lock:
                if self._queue:
                    self._queue[0].event.set()  # the next leader (its call is not done)
                else:
                    self._leading = False
            for call in group:
                call.done = True
                call.event.set()

    def verify_many(self, key_hashes: Sequence[bytes]) -> list[Row | None]:
        """Verify the calls for ``key_hashes`` (by the leader): one statement, one round trip."""
        for attempt in (1, 2):
            try:
                # Under gevent the whole round trip has a deadline too: a server that stopped answering on an
                # open connection (its host still acknowledging TCP) would otherwise be waited on forever,
                # and every call of the worker with it. Not retried: the next call tries a fresh connection.
                with green.deadline(self.timeout + 1):
                    cur = self._cursor()
                    if len(key_hashes) == 1:
                        cur.execute(sql.EXECUTE_SQL, (key_hashes[0],))
                        return [cur.fetchone()]
                    cur.execute(sql.EXECUTE_GROUP_SQL, (list(key_hashes),))
                    found: dict[int, Row] = {row[0]: row[1:] for row in cur.fetchall()}
                self.groups += 1
                self.grouped_calls += len(key_hashes)
                return [found.get(ord_) for ord_ in range(1, len(key_hashes) + 1)]
            except (green.DeadlineExceeded, QueryCanceled):
                self._drop()
                log.warning("verification failed: no answer from the database within %.0f s", self.timeout)
                raise DatabaseUnavailable("the database did not answer in time") from None
            except (psycopg2.OperationalError, psycopg2.InterfaceError, InvalidSqlStatementName) as exc:
                # A dropped connection (or one reset by a pooler, which loses the prepared statement) is
                # retried once on a fresh one. Had the server committed just before the connection dropped,
                # the calls count twice against the limit: they can only be refused early, never admitted
                # beyond the limit.
                self._drop()
                if attempt == 2:
                    log.warning("verification failed: database unavailable: %s", exc)
                    raise DatabaseUnavailable(str(exc)) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()


class SessionBackend:
    """Runs on ``db.session``'s connection and commits, so tests see the effect inside their transaction."""

    def verify(self, key_hash: bytes) -> Row | None:
        connection = db.session.connection()
        info = connection.connection.info
        cur = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if not info.get(sql.STATEMENT_NAME):
                cur.execute(sql.PREPARE_SQL)
                info[sql.STATEMENT_NAME] = True
            cur.execute(sql.EXECUTE_SQL, (key_hash,))
            row = cur.fetchone()
        finally:
            cur.close()
        db.session.commit()
        return row  # type: ignore[no-any-return]

    def close(self) -> None:
        return None
