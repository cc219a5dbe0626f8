"""Verification behind a transaction pooler (PgBouncer's ``pool_mode = transaction``): one query string per call.

A transaction pooler hands each transaction of a client connection to whichever server connection is free, so
what the default mode sets up once per connection (``SET`` settings and ``PREPARE``d statements) is missing on
the next server connection, and its settings leak into the sessions of other clients that get this one. With
``DATABASE_POOL_MODE=transaction`` each verification is one simple-protocol query string that brings what it needs:

1. a ``DO`` block that prepares the statement on the server connection the string runs on, unless that
   connection has it already (named by a hash of its text, so two versions of the app never share a name);
2. its settings as ``SET LOCAL``;
3. ``EXECUTE`` of the statement, its arguments written as ``E'…'`` literals, which read the same whatever
   ``standard_conforming_strings`` is (a query string is parsed whole before its first ``SET`` runs).

PostgreSQL runs the statements of one query string as one implicit transaction, which the pooler keeps on one
server connection, and ``SET LOCAL`` ends with that transaction. Prepared statements are not transactional: they
stay on the server connection for the next call that lands there, as cached plans do, and cost other clients
nothing. So each server connection prepares each statement once, and a call pays for the ``DO`` block's check
and the settings (docs/performance.md, "Behind PgBouncer"). The usage writer keeps its settings per transaction
too and gates its vacuum by the tables' last vacuum instead of a session advisory lock (:data:`VACUUM_DUE_SQL`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from portal.verification import sql

SESSION, TRANSACTION = "session", "transaction"
POOL_MODES = (SESSION, TRANSACTION)

# The usage writer's settings, at the start of each of its transactions (a separate statement: the next ones are
# parsed after it ran).
WRITER_SETTINGS_SQL = "SET LOCAL TimeZone = 'UTC'; SET LOCAL standard_conforming_strings = on"
# Whether the churned tables (the second parameter) are due for the writer's vacuum: one of them was not vacuumed,
# by a worker or by autovacuum, in the last (first parameter) seconds. Without the session lock two workers may
# both find them due; VACUUM's SKIP_LOCKED then has the second skip the tables the first is vacuuming.
VACUUM_DUE_SQL = (
    "SELECT coalesce(bool_or(coalesce(greatest(last_vacuum, last_autovacuum), '-infinity') "
    "< now() - make_interval(secs => %s)), true) FROM pg_stat_user_tables WHERE relid = ANY (%s::regclass[])"
)
_PREPARES = {
    sql.STATEMENT_NAME: sql.PREPARE_SQL,
    sql.GROUP_STATEMENT_NAME: sql.PREPARE_GROUP_SQL,
    sql.COUNTERS_STATEMENT_NAME: sql.PREPARE_COUNTERS_SQL,
    sql.COUNTERS_GROUP_STATEMENT_NAME: sql.PREPARE_COUNTERS_GROUP_SQL,
}


def _text(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _bytea(value: bytes) -> str:
    return "E'\\\\x" + value.hex() + "'::bytea"


def statement_name(name: str) -> str:
    """The name a statement is prepared under behind a transaction pooler: its name and a hash of its text."""
    return f"{name}_{hashlib.sha256(_PREPARES[name].encode()).hexdigest()[:16]}"


def _preamble(name: str, timeout: float) -> str:
    """What runs before the ``EXECUTE`` of ``name``: prepare it where missing, then the settings."""
    hashed = statement_name(name)
    prepare = _PREPARES[name].replace(f"PREPARE {name} ", f"PREPARE {hashed} ", 1)
    if "\\" in prepare or "$portal$" in prepare:
        raise ValueError("a verification statement must not contain a backslash or $portal$")
    return (
        f"DO $portal$BEGIN IF NOT EXISTS (SELECT FROM pg_prepared_statements WHERE name = '{hashed}') "
        f"THEN EXECUTE '{prepare.replace(chr(39), chr(39) * 2)}'; END IF; END$portal$; "
        # The session settings of DirectBackend._cursor, for this transaction only.
        "SET LOCAL TimeZone = 'UTC'; SET LOCAL synchronous_commit = off; "
        f"SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL statement_timeout = {int(timeout * 1000)}; "
        f"EXECUTE {hashed} "
    )


class PooledStatements:
    """The query strings of :mod:`portal.verification.sql`'s four statements behind a transaction pooler.

    Built with the signatures of :func:`~portal.verification.sql.execute_sql` and
    :func:`~portal.verification.sql.execute_group_sql`, so the backend swaps one pair of functions for the other.
    """

    def __init__(self, timeout: float) -> None:
        self._preambles = {name: _preamble(name, timeout) for name in _PREPARES}

    def execute_sql(self, name: str, key_hash: bytes, scope: str | None, ip: str | None) -> str:
        """Run the single-call statement ``name`` with these arguments."""
        return f"{self._preambles[name]}({_bytea(key_hash)}, {_text(scope)}, {_text(ip)}::inet)"

    def execute_group_sql(
        self, name: str, key_hashes: Sequence[bytes], scopes: Sequence[str | None], ips: Sequence[str | None]
    ) -> str:
        """Run the grouped statement ``name`` with these arrays, in call order."""
        return (
            f"{self._preambles[name]}(ARRAY[{','.join(map(_bytea, key_hashes))}], "
            f"ARRAY[{','.join(map(_text, scopes))}]::text[], ARRAY[{','.join(map(_text, ips))}]::inet[])"
        )
