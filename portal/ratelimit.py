"""Fixed-window counters in ``rate_limit_tracking``, shared by every process because they live in PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa

from portal.extensions import db

_HIT = sa.text(
    """
    INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count)
    VALUES (:bucket, to_timestamp(floor(extract(epoch FROM now()) / :seconds) * :seconds), :org, 1)
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limit_tracking.count + 1
    RETURNING count
    """
)
_COUNT = sa.text(
    """
    SELECT count FROM rate_limit_tracking
    WHERE bucket = :bucket
      AND window_start = to_timestamp(floor(extract(epoch FROM now()) / :seconds) * :seconds)
    """
)


def hit(bucket: str, window: timedelta, organization_id: uuid.UUID | None = None) -> int:
    """Count one event in the current window of ``bucket``; returns the window's count including it."""
    return int(
        db.session.execute(
            _HIT, {"bucket": bucket, "seconds": int(window.total_seconds()), "org": organization_id}
        ).scalar_one()
    )


def current(bucket: str, window: timedelta) -> int:
    value = db.session.execute(_COUNT, {"bucket": bucket, "seconds": int(window.total_seconds())}).scalar()
    return int(value or 0)


def prune(older_than: datetime) -> int:
    """Delete windows that started before ``older_than``; returns how many rows went."""
    result = db.session.execute(
        sa.text("DELETE FROM rate_limit_tracking WHERE window_start < :t"), {"t": older_than}
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
