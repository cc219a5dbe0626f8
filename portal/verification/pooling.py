"""Verification behind a transaction pooler (PgBouncer's ``pool_mode = transaction``): no state kept in a session.

A transaction pooler hands each transaction of a client connection to whichever server connection is free, so
what the default mode keeps in its session (``SET`` settings and ``PREPARE``d statements) is missing on the next
server connection, and leaks into the sessions of other clients that get this one. With
``DATABASE_POOL_MODE=transaction`` each verification is one simple-protocol query string instead: its settings as
``SET LOCAL``, then the statement itself with its arguments written as literals. PostgreSQL runs the statements of
one query string as one implicit transaction, which the pooler keeps on one server connection, and ``SET LOCAL``
ends with that transaction. The literals are escape strings (``E'…'``), which read the same whatever
``standard_conforming_strings`` is: a query string is parsed whole before its first ``SET`` runs.

The price is that PostgreSQL parses and plans the statement on every call instead of once per connection
(docs/performance.md, "Behind a transaction pooler"). The usage writer keeps its settings per transaction too and
gates its vacuum by the tables' last vacuum instead of a session advisory lock (:data:`VACUUM_DUE_SQL`).
"""

from __future__ import annotations

import re
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

_PARAM = re.compile(r"\$([123])(?!\d)")


def _text(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _bytea(value: bytes) -> str:
    return "E'\\\\x" + value.hex() + "'::bytea"


Template = tuple[str, int, str, int, str, int, str]


def _template(statement: str) -> Template:
    """``statement`` cut at its parameters ``$1``..``$3`` (each once, in any order), with their numbers."""
    parts = _PARAM.split(statement)
    if len(parts) != 7 or sorted(parts[1::2]) != ["1", "2", "3"]:
        raise ValueError("a verification statement must name $1, $2 and $3 once each")
    return (parts[0], int(parts[1]) - 1, parts[2], int(parts[3]) - 1, parts[4], int(parts[5]) - 1, parts[6])


class InlineStatements:
    """The query strings of :mod:`portal.verification.sql`'s four statements with their settings, built with the
    signatures of :func:`~portal.verification.sql.execute_sql` and :func:`~portal.verification.sql.execute_group_sql`
    so the backend swaps one pair of functions for the other."""

    def __init__(self, timeout: float) -> None:
        # The session settings of DirectBackend._cursor, for this transaction only. plan_cache_mode has nothing
        # to do: an unnamed statement is always planned for its literals.
        self.prefix = (
            "SET LOCAL TimeZone = 'UTC'; SET LOCAL synchronous_commit = off; "
            f"SET LOCAL statement_timeout = {int(timeout * 1000)}; "
        )
        self._templates = {
            sql.STATEMENT_NAME: _template(sql.verify_statement()),
            sql.COUNTERS_STATEMENT_NAME: _template(sql.verify_counters_statement()),
            sql.GROUP_STATEMENT_NAME: _template(sql.verify_group_statement()),
            sql.COUNTERS_GROUP_STATEMENT_NAME: _template(sql.verify_counters_group_statement()),
        }

    def _fill(self, name: str, args: tuple[str, str, str]) -> str:
        p0, i1, p1, i2, p2, i3, p3 = self._templates[name]
        return f"{self.prefix}{p0}{args[i1]}{p1}{args[i2]}{p2}{args[i3]}{p3}"

    def execute_sql(self, name: str, key_hash: bytes, scope: str | None, ip: str | None) -> str:
        """The single-call statement ``name`` with these arguments, after the settings."""
        return self._fill(name, (_bytea(key_hash), _text(scope), _text(ip)))

    def execute_group_sql(
        self, name: str, key_hashes: Sequence[bytes], scopes: Sequence[str | None], ips: Sequence[str | None]
    ) -> str:
        """The grouped statement ``name`` with these arrays, in call order, after the settings."""
        return self._fill(
            name,
            (
                f"ARRAY[{','.join(map(_bytea, key_hashes))}]",
                f"ARRAY[{','.join(map(_text, scopes))}]::text[]",
                f"ARRAY[{','.join(map(_text, ips))}]::inet[]",
            ),
        )
