"""Where the verification statement runs: one autocommit connection per worker process, calls grouped.

Each process keeps one psycopg2 connection in autocommit mode with the statements prepared once, so a
verification is one round trip (no BEGIN/COMMIT, no pool pre-ping), with ``synchronous_commit = off`` so the
limiter's row lock is released at the WAL buffer rather than the disk flush. docs/performance.md has the numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg2
import sqlalchemy as sa
from psycopg2.errors import InvalidSqlStatementName, QueryCanceled, SerializationFailure
from psycopg2.extensions import parse_dsn

from portal import green
from portal.verification import pooling, sql
from portal.verification.deadlines import LIBPQ_MIN_CONNECT_TIMEOUT, WATCHDOG, Watched, connect_options
from portal.verification.outcomes import DatabaseUnavailable

log = logging.getLogger("portal.verification")

Row = tuple[Any, ...]
STATUS = 5  # where a row of the verification statements (without ``ord``) has the call's status


class Backend(Protocol):
    def verify(self, key_hash: bytes, scope: str | None = None, ip: str | None = None) -> Row | None: ...

    def close(self) -> None: ...


def libpq_dsn(sqlalchemy_url: str) -> str:
    """The app's SQLAlchemy URL as a libpq connection URI."""
    return sa.make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Unreachable(DatabaseUnavailable):
    """The database did not answer within the deadline, or refused the connection: the calls queued behind are
    answered 503 at once, and until a call gets an answer, only one at a time tries the database."""


class _Call:
    """One verification waiting in a worker's queue: its key hash, scope, client address and deadline (monotonic
    seconds), then its row (or error) when done."""

    __slots__ = ("deadline", "done", "error", "event", "ip", "key_hash", "row", "scope")

    def __init__(
        self, key_hash: bytes, scope: str | None = None, ip: str | None = None, deadline: float = float("inf")
    ) -> None:
        self.key_hash = key_hash
        self.scope = scope
        self.ip = ip
        self.deadline = deadline
        self.event = threading.Event()
        self.done = False
        self.row: Row | None = None
        self.error: BaseException | None = None


class DirectBackend:
    """One autocommit connection per process with the statements prepared; reconnects after a failure.

    Concurrent calls of one process are grouped: the first to arrive (a thread under gthread, a greenlet under
    gevent) leads and runs ONE grouped statement (:func:`portal.verification.sql.verify_group_statement`) for
    every call queued at that moment, while later calls queue; when done it hands the queue to the first of
    them, the next leader. A lone call runs at once with the single-call statement, so grouping adds no
    latency; under load it saves PostgreSQL a statement, a commit and a counter update per call. One leader at
    a time means one connection per process (docs/performance.md, "Concurrent verifications share one
    grouped statement").

    Every call has one deadline, ``timeout`` seconds from its arrival, for queueing, connecting and the round
    trip together; past it the call raises :class:`DatabaseUnavailable` (503) at once, whatever it waits for.
    A leader's statement ends at its group's earliest deadline. Once the database has not answered (a timeout,
    a refused connection), the calls queued behind are answered 503 at once, and until a call is answered
    again only one call at a time tries the database: the others arriving meanwhile answer 503 without
    waiting, so a hung database holds one call per process, not every call for a whole deadline.
    """

    def __init__(
        self, dsn: str, *, max_group: int = 64, timeout: float = 5.0, watch: bool = True, pool_mode: str = "session"
    ) -> None:
        if not timeout > 0:
            raise ValueError("the verification deadline must be a positive number of seconds")
        self.dsn = dsn
        self.max_group = max_group
        self.timeout = timeout  # seconds from a call's arrival to its answer, 503 when the database is late
        self.groups = 0  # statements run for more than one call (observability and tests)
        self._cur: Any = None  # the leader's prepared cursor, opened on first use in this process
        self._pid = 0
        self._queue_lock = threading.Lock()
        self._queue: list[_Call] = []
        self._leading = False  # a leader is running a statement; invariant: not leading => queue empty
        self._down = False  # the database's last answer was none: one call at a time tries it
        self._deadline: float | None = None  # the running group's deadline (set by its leader)
        # Outside gevent a thread waiting in libpq cannot be interrupted: the watchdog ends its statement. Not for
        # a connection borrowed from someone else (``watch=False``), whose socket is not ours to shut.
        self._watch = watch
        self._watched = False  # whether this process's statements are watched (threads, not gevent)
        self._guard = Watched()
        # Hashes of keys the first statement deferred (own limit or hard quota), run by the second one at once.
        self._counted: set[bytes] = set()
        self.max_counted = 10_000
        # What a statement is sent as, chosen once: EXECUTE of the statements this session prepared, or behind a
        # transaction pooler one query string that prepares where missing, sets and executes (pooling.py).
        self._pooled = pooling.PooledStatements(timeout) if pool_mode == pooling.TRANSACTION else None
        self._execute_sql = self._pooled.execute_sql if self._pooled else sql.execute_sql
        self._execute_group_sql = self._pooled.execute_group_sql if self._pooled else sql.execute_group_sql

    def _cursor(self, deadline: float | None = None) -> Any:
        cur = self._cur
        if cur is None or cur.closed or self._pid != os.getpid():
            conn = self.connect(deadline)
            conn.autocommit = True
            cur = conn.cursor()
            if self._pooled is None:  # behind a transaction pooler every statement brings what it needs
                cur.execute("SET TimeZone = 'UTC'")
                cur.execute("SET synchronous_commit = off")
                # PostgreSQL would otherwise plan both statements afresh on every execution (their custom plans
                # look cheaper than the generic one, so it never switches): planning cost more than running them.
                # The generic plans use the same indexes (key hash, organization, counter row).
                cur.execute("SET plan_cache_mode = force_generic_plan")
                # A statement stuck on a lock or an overloaded server gives up on the server too, not only here.
                cur.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
                cur.execute(sql.SESSION_SETTINGS_SQL)
                for prepare in (
                    sql.PREPARE_SQL,
                    sql.PREPARE_GROUP_SQL,
                    sql.PREPARE_COUNTERS_SQL,
                    sql.PREPARE_COUNTERS_GROUP_SQL,
                ):
                    cur.execute(prepare)
            self._cur, self._pid = cur, os.getpid()
            self._watched = self._watch and not green.active()
            if self._watched:
                WATCHDOG.watch(self._guard, conn.fileno())
        return cur

    def connect(self, deadline: float | None = None) -> Any:
        """A new psycopg2 connection for this process's statements, its waits bounded by ``deadline``
        (monotonic seconds; :func:`portal.verification.deadlines.connect_options`)."""
        remaining = self.timeout if deadline is None else deadline - time.monotonic()
        options = connect_options(parse_dsn(self.dsn), remaining, self.timeout)
        return psycopg2.connect(self.dsn, application_name="procode-verify", **options)

    def _drop(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None and self._pid == os.getpid():
            if self._watched:
                WATCHDOG.unwatch(self._guard)  # before its descriptor can be reused
            with contextlib.suppress(psycopg2.Error):
                cur.connection.close()

    def verify(self, key_hash: bytes, scope: str | None = None, ip: str | None = None) -> Row | None:
        call = _Call(key_hash, scope, ip, time.monotonic() + self.timeout)
        with self._queue_lock:
            if self._down and self._leading:  # another call is trying the database that did not answer
                raise DatabaseUnavailable("the database is not answering; another call is trying it")
            self._queue.append(call)
            lead, self._leading = not self._leading, True
        if not lead:
            try:
                # Set when the call is answered, or when it is to lead the next group.
                answered = call.event.wait(max(0.0, call.deadline - time.monotonic()))
            except BaseException:  # the waiting greenlet was killed or timed out
                self._abandon(call)
                raise
            if not answered or (not call.done and time.monotonic() >= call.deadline):
                self._expire(call)
        if not call.done:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.row

    def _expire(self, call: _Call) -> None:
        """A call whose deadline passed leaves the queue and answers 503, unless it was answered meanwhile. A
        call still waiting means the database kept the leader past its deadline: it is taken as not answering."""
        self._abandon(call)
        if not call.done:
            self._down = True
            raise Unreachable("no answer from the database within the deadline")

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
        """Run the queued calls (this thread's one among them) as one group, then pass the lead on; when the
        database did not answer, answer the calls queued meanwhile too."""
        with self._queue_lock:
            group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
        behind: list[_Call] = []
        unreachable = False
        # The group's first call arrived first (the queue is in arrival order): its deadline is the earliest.
        self._deadline = group[0].deadline
        try:
            rows = self.verify_many(
                [call.key_hash for call in group], [call.scope for call in group], [call.ip for call in group]
            )
            for call, row in zip(group, rows, strict=True):
                call.row = row
            self._down = False
        except BaseException as exc:  # every waiting call must be woken, whatever happened
            for call in group:
                call.error = exc
            unreachable = self._down = isinstance(exc, Unreachable)
        finally:
            self._deadline = None
            with self._queue_lock:
                if unreachable:  # the calls queued meanwhile would wait on the same database: 503 now
                    behind, self._queue, self._leading = self._queue, [], False
                elif self._queue:
                    self._queue[0].event.set()  # the next leader (its call is not done)
                else:
                    self._leading = False
            for call in group:
                call.done = True
                call.event.set()
            for call in behind:
                call.error, call.done = group[0].error, True
                call.event.set()

    def verify_many(
        self,
        key_hashes: Sequence[bytes],
        scopes: Sequence[str | None] | None = None,
        ips: Sequence[str | None] | None = None,
    ) -> list[Row | None]:
        """Verify the calls for ``key_hashes`` (by the leader): one statement, one round trip, for most calls.

        ``scopes`` and ``ips`` are the scope each call asks for and its client address (``None``: not given).
        Calls the first statement defers (their key has its own limit, or their plan a hard monthly quota) are
        decided by a second statement for them alone (:func:`portal.verification.sql._first`); the first
        touched no counter for them.
        """
        if len(key_hashes) == 1:  # a lone call: the same statements, without a group's bookkeeping
            return [self._verify_one(key_hashes[0], scopes[0] if scopes else None, ips[0] if ips else None)]
        scopes = list(scopes) if scopes is not None else [None] * len(key_hashes)
        ips = list(ips) if ips is not None else [None] * len(key_hashes)
        # Keys deferred before go straight to the second statement. It decides any call exactly, so a key
        # that has since lost its own limit (or whose organization left a hard-quota plan) is still answered
        # right, only at the second statement's cost until the set is cleared.
        counted = self._counted
        deferred = [o for o, h in enumerate(key_hashes, 1) if h in counted]
        found: dict[int, Row] = {}
        rest = [o for o, h in enumerate(key_hashes, 1) if h not in counted]
        if rest:
            first = self._run_group(
                sql.GROUP_STATEMENT_NAME,
                [key_hashes[o - 1] for o in rest],
                [scopes[o - 1] for o in rest],
                [ips[o - 1] for o in rest],
            )
            for o, row in first.items():
                if row[STATUS] == sql.DEFERRED:  # no counter was touched for it
                    deferred.append(rest[o - 1])
                    self._remember_deferred(key_hashes[rest[o - 1] - 1])
                else:
                    found[rest[o - 1]] = row
        if deferred:
            deferred.sort()
            second = self._run_group(
                sql.COUNTERS_GROUP_STATEMENT_NAME,
                [key_hashes[o - 1] for o in deferred],
                [scopes[o - 1] for o in deferred],
                [ips[o - 1] for o in deferred],
            )
            found.update((deferred[o - 1], row) for o, row in second.items())
        if len(key_hashes) > 1:
            self.groups += 1
        return [found.get(ord_) for ord_ in range(1, len(key_hashes) + 1)]

    def _verify_one(self, key_hash: bytes, scope: str | None, ip: str | None) -> Row | None:
        """:meth:`verify_many` for one call."""
        if key_hash not in self._counted:
            rows = self._run(self._execute_sql(sql.STATEMENT_NAME, key_hash, scope, ip))
            if not rows or rows[0][STATUS] != sql.DEFERRED:
                return rows[0] if rows else None
            self._remember_deferred(key_hash)
        rows = self._run(self._execute_sql(sql.COUNTERS_STATEMENT_NAME, key_hash, scope, ip))
        return rows[0] if rows else None

    def _remember_deferred(self, key_hash: bytes) -> None:
        if len(self._counted) >= self.max_counted:
            self._counted.clear()
        self._counted.add(key_hash)

    def _run_group(
        self, name: str, key_hashes: list[bytes], scopes: list[str | None], ips: list[str | None]
    ) -> dict[int, Row]:
        """Run a grouped statement: each row by its call's position, without it."""
        rows = self._run(self._execute_group_sql(name, key_hashes, scopes, ips))
        return {row[0]: row[1:] for row in rows}

    def _run(self, statement: str) -> list[Row]:
        """Run one ``EXECUTE`` of a verification statement by the group's deadline: its rows."""
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                # Under gevent the wait itself ends at the deadline (a server that stopped answering on an open
                # connection, its host still acknowledging TCP, would otherwise be waited on forever, and every
                # call of the worker with it); in a thread the watchdog shuts the connection down instead.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise green.DeadlineExceeded
                with green.deadline(remaining):
                    cur = self._cursor(deadline)
                    if not self._watched:
                        cur.execute(statement)
                        return cur.fetchall()  # type: ignore[no-any-return]
                    guard = self._guard
                    guard.deadline = deadline
                    try:
                        cur.execute(statement)
                        return cur.fetchall()  # type: ignore[no-any-return]
                    finally:
                        guard.deadline = None
            except SerializationFailure:
                # A key or quota counter row was opened by another statement after this one's snapshot: the
                # statement undid itself (sql._verify, step 3); run it again, now seeing that row.
                if attempt >= 5:
                    raise DatabaseUnavailable("the limiter's counters stayed contended") from None
                continue
            except (green.DeadlineExceeded, QueryCanceled):
                self._drop()
                log.warning("verification failed: no answer from the database within %g s", self.timeout)
                raise Unreachable("the database did not answer in time") from None
            except (psycopg2.OperationalError, psycopg2.InterfaceError, InvalidSqlStatementName) as exc:
                # A dropped connection (or one reset by a pooler, which loses the prepared statement) is
                # retried once on a fresh one, within the same deadline. Had the server committed just before
                # the connection dropped, the calls count twice against the limit: they can only be refused
                # early, never admitted beyond the limit.
                self._drop()
                left = deadline - time.monotonic()
                late = left <= 0
                # In a thread nothing cuts a connection attempt short of libpq's whole-second floor: a retry
                # with less than that left could overrun the deadline, so the call answers 503 now instead.
                short = not green.active() and left < LIBPQ_MIN_CONNECT_TIMEOUT
                if attempt >= 2 or late or short:
                    reason = "no answer within the deadline" if late else str(exc).strip().splitlines()[0]
                    log.warning("verification failed: database unavailable: %s", reason)
                    raise Unreachable(reason) from None

    def close(self) -> None:
        self._drop()
