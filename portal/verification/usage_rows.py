"""Usage rows as the database takes them: one ``INSERT`` of column arrays per batch, the invalid-key counts as one
upsert, and the same row by row, dropping only what the database refuses. Shared by the usage writer and the
replay of spill files (:mod:`portal.verification.spill`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg2

from portal.verification import sql
from portal.verification.backend import Row

log = logging.getLogger("portal.verification.usage")

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


def write_each(cursor: Any, rows: Sequence[Row], counts: InvalidKeyCounts) -> int:
    """Write row by row in the cursor's transaction, each in a savepoint: a row the database refuses must not block
    the others forever. Logs and drops the refused; returns how many usage rows were refused."""
    refused = 0
    for key, calls in counts.items():
        cursor.execute("SAVEPOINT usage_row")
        try:
            write_invalid_key_counts(cursor, {key: calls})
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            cursor.execute("ROLLBACK TO SAVEPOINT usage_row")
            log.error("invalid-key count refused by the database and dropped: %r (%s)", key, exc)
    for row in rows:
        cursor.execute("SAVEPOINT usage_row")
        try:
            write_usage_rows(cursor, [row])
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            cursor.execute("ROLLBACK TO SAVEPOINT usage_row")
            refused += 1
            log.error("usage row refused by the database and dropped: %r (%s)", row, exc)
    return refused


def no_partition(exc: psycopg2.Error) -> bool:
    """The usage table has no partition for a row's time (a check violation that names no constraint)."""
    return exc.pgcode == sql.NO_PARTITION_PGCODE and exc.diag.constraint_name is None


def row_days(rows: Sequence[Row]) -> list[tuple[datetime, datetime]]:
    """A (time, time) span in each UTC day ``rows`` fall in: the partitions they need."""
    days = {row[2].astimezone(UTC).date(): row[2] for row in rows}  # one time of each UTC day
    return [(at, at) for at in days.values()]


def make_partitions(cursor: Any, spans: Sequence[tuple[datetime, datetime]]) -> int:
    """The daily partitions covering each ``(lo, hi)`` of ``spans`` (those missing), in the cursor's
    transaction: how many were made."""
    created = 0
    for lo, hi in spans:
        cursor.execute(sql.ENSURE_PARTITIONS_SQL, (lo, hi))
        created += int(cursor.fetchone()[0])
    return created
