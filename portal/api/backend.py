"""Where the verification statement runs: a per-thread autocommit connection, or the request's session.

``direct`` (production): each worker thread keeps its own psycopg2 connection in autocommit mode, with the
statement prepared once, so a verification is exactly one round trip (no BEGIN/COMMIT, no pool pre-ping). It
runs with ``synchronous_commit = off``: the limiter's row lock is released as soon as the commit is in the WAL
buffer instead of after the disk flush, which is what lets one organization's counter row take thousands of
updates a second. ``session`` (tests): the statement runs on the Flask-SQLAlchemy session's connection, so it
joins the test's rolled-back transaction.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg2
import sqlalchemy as sa
from psycopg2.errors import InvalidSqlStatementName

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


def _uuid(value: str | None) -> str:
    """A uuid from our own statement's ``::text``; still checked, as it is pasted into SQL."""
    if value is None:
        return "NULL"
    if len(value) != 36 or not _UUID_CHARS.issuperset(value):
        raise ValueError(f"not a uuid: {value!r}")
    return f"'{value}'::uuid"


# COPY's text format: backslash, tab, newline and carriage return are escaped; NULL is ``\N``.
NULL = "\\N"
_COPY_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str | None) -> str:
    if value is None:
        return NULL
    if _COPY_SPECIAL.search(value) is None:  # the common case: nothing to escape
        return value
    if "\x00" in value:
        raise ValueError("NUL in a usage row")
    return value.translate(_COPY_ESCAPES)


def _copy_uuid(value: str | None) -> str:
    """A uuid from our own statement's ``::text``; checked all the same, as it is a field of the COPY data."""
    if value is None:
        return NULL
    if len(value) != 36 or not _UUID_CHARS.issuperset(value):
        raise ValueError(f"not a uuid: {value!r}")
    return value


def render_usage_line(row: Row) -> str:
    """One line of ``COPY api_key_usage … FROM STDIN`` (text format). COPY instead of a multi-row INSERT:
    PostgreSQL skips parsing and planning a statement with thousands of literals (≈17 instead of ≈30 µs of
    server CPU per row, measured), and rendering a line costs the writer thread less GIL time."""
    key_id, org_id, at, endpoint, status, latency, outcome = row
    return (
        f"{_copy_uuid(key_id)}\t{_copy_uuid(org_id)}\t{at.isoformat()}\t{_copy_text(endpoint)}\t"
        f"{int(status)}\t{NULL if latency is None else repr(float(latency))}\t{_copy_text(outcome)}\n"
    )


def write_usage_rows(cursor: Any, rows: Sequence[Row]) -> None:
    """The usage rows in one ``COPY`` (statement-level triggers run once per batch, as for an INSERT), then
    ``last_used_at`` of their keys (once a minute at most)."""
    if not rows:
        return
    latest: dict[str, Any] = {}
    for row in rows:
        key_id, occurred_at = row[0], row[2]
        if key_id is not None and (key_id not in latest or occurred_at > latest[key_id]):
            latest[key_id] = occurred_at
    cursor.copy_expert(sql.COPY_USAGE, io.StringIO("".join(map(render_usage_line, rows))))
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
    """Per-thread autocommit connections with the verification prepared; reconnects after a failure.

    Concurrent verifications of one process are grouped: the first thread to arrive becomes the leader and
    runs the statement for every call queued at that moment (itself included) on its own connection, in ONE
    grouped statement (:func:`portal.api.sql.verify_group_statement`), while the calls arriving meanwhile
    queue; when it is done it hands the queue to the first of them, the next leader. A lone call runs at once,
    alone, with the single-call statement: no added latency. Grouping saves PostgreSQL a statement, a commit
    and a counter update per call (≈ 100 µs of backend CPU for one call against ≈ 30 µs per call in groups of
    8), and the worker a round trip.
    """

    def __init__(self, dsn: str, *, max_group: int = 64) -> None:
        self.dsn = dsn
        self.max_group = max_group
        self.groups = 0  # statements run for more than one call (observability and tests)
        self.grouped_calls = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._queue_lock = threading.Lock()
        self._queue: list[_Call] = []
        self._leading = False  # a leader is running a statement; invariant: not leading => queue empty

    def connect(self, *, synchronous_commit: bool) -> Any:
        conn = psycopg2.connect(self.dsn, application_name="procode-verify")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET TimeZone = 'UTC'")
            if not synchronous_commit:
                cur.execute("SET synchronous_commit = off")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _cursor(self) -> Any:
        local = self._local
        cur = getattr(local, "cursor", None)
        if cur is None or cur.closed or local.pid != os.getpid():
            conn = self.connect(synchronous_commit=False)
            cur = conn.cursor()
            cur.execute(sql.PREPARE_SQL)
            cur.execute(sql.PREPARE_GROUP_SQL)
            local.cursor, local.pid = cur, os.getpid()
        return cur

    def _drop(self) -> None:
        cur = getattr(self._local, "cursor", None)
        self._local.cursor = None
        if cur is not None:
            with self._lock, contextlib.suppress(ValueError):
                self._connections.remove(cur.connection)
            with contextlib.suppress(psycopg2.Error):
                cur.connection.close()

    def verify(self, key_hash: bytes) -> Row | None:
        call = _Call(key_hash)
        with self._queue_lock:
            self._queue.append(call)
            lead, self._leading = not self._leading, True
        if not lead:
            call.event.wait()  # set when the call is answered, or when it is to lead the next group
        if not call.done:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.row

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
        """Verify the calls for ``key_hashes`` on this thread's connection: one statement, one round trip."""
        for attempt in (1, 2):
            try:
                cur = self._cursor()
                if len(key_hashes) == 1:
                    cur.execute(sql.EXECUTE_SQL, (key_hashes[0],))
                    return [cur.fetchone()]
                cur.execute(sql.EXECUTE_GROUP_SQL, (list(key_hashes),))
                found: dict[int, Row] = {row[0]: row[1:] for row in cur.fetchall()}
                self.groups += 1
                self.grouped_calls += len(key_hashes)
                return [found.get(ord_) for ord_ in range(1, len(key_hashes) + 1)]
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
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
        self._local = threading.local()


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
