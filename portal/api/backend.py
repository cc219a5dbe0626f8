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


class DirectBackend:
    """Per-thread autocommit connections with the verification prepared; reconnects after a failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []

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
        for attempt in (1, 2):
            try:
                cur = self._cursor()
                cur.execute(sql.EXECUTE_SQL, (key_hash,))
                return cur.fetchone()  # type: ignore[no-any-return]
            except (psycopg2.OperationalError, psycopg2.InterfaceError, InvalidSqlStatementName) as exc:
                # A dropped connection (or one reset by a pooler, which loses the prepared statement) is
                # retried once on a fresh one. Had the server committed just before the connection dropped,
                # the call counts twice against the limit: it can only be refused early, never admitted
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
