"""Fixed-window counters in ``rate_limit_tracking``, shared by every process because they live in PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from portal.extensions import db

_TAKE = sa.text(
    """
    INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count)
    VALUES (:bucket, to_timestamp(floor(extract(epoch FROM now()) / :seconds) * :seconds), NULL, 1)
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limit_tracking.count + 1
    RETURNING count, window_start
    """
)
_GIVE_BACK = sa.text(
    "UPDATE rate_limit_tracking SET count = count - 1 WHERE bucket = :bucket AND window_start = :window_start"
)


def take(bucket: str, window: timedelta) -> tuple[int, datetime]:
    """Count an attempt before it is made; returns the window's count including it, and the window.

    Counting first (instead of checking, trying, then counting a failure) means concurrent attempts each see
    a distinct count, so no more than the limit can be in flight at once, however many arrive together.
    """
    count, window_start = db.session.execute(_TAKE, {"bucket": bucket, "seconds": int(window.total_seconds())}).one()
    return int(count), window_start


def give_back(bucket: str, window_start: datetime) -> None:
    """Undo :func:`take` for an attempt that turned out not to count (a successful sign-in)."""
    db.session.execute(_GIVE_BACK, {"bucket": bucket, "window_start": window_start})


# A monthly quota counter (``quota:<org>``, window = the UTC month) lives until its month is over.
_PRUNE = sa.text(
    "DELETE FROM rate_limit_tracking WHERE window_start < :t"
    " AND (bucket NOT LIKE 'quota:%' OR window_start < CAST(:t AS timestamptz) - interval '2 months')"
)


def prune(older_than: datetime) -> int:
    """Delete windows that started before ``older_than`` (quota months only once long over); how many went."""
    result = db.session.execute(_PRUNE, {"t": older_than})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
