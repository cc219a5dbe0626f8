"""Helpers shared by the /v1 tests."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from portal.extensions import db
from portal.models import ApiKeyUsage
from portal.verification import sql


def verify(client: Any, key: object, **extra: Any) -> Any:
    return client.post("/v1/keys/verify", json={"key": key, **extra})


def usage_rows(**filters: Any) -> list[ApiKeyUsage]:
    query = sa.select(ApiKeyUsage).order_by(ApiKeyUsage.id)
    for name, value in filters.items():
        query = query.where(getattr(ApiKeyUsage, name) == value)
    return list(db.session.scalars(query))


def invalid_key_counts() -> dict[tuple[Any, str | None, str], int]:
    """``api_invalid_key_counts`` as {(minute, client address, outcome): calls}."""
    rows = db.session.execute(sa.text("SELECT minute, host(client_ip), outcome, calls FROM api_invalid_key_counts"))
    return {(minute, ip, outcome): int(calls) for minute, ip, outcome, calls in rows}


def invalid_key_calls(outcome: str | None = None) -> int:
    """Calls counted in ``api_invalid_key_counts`` (with ``outcome`` only, if given)."""
    return sum(n for (_, _, o), n in invalid_key_counts().items() if outcome in (None, o))


def usage_count() -> int:
    return int(db.session.scalar(sa.select(sa.func.count()).select_from(ApiKeyUsage)) or 0)


def exhaust(organization_id: Any, limit: int) -> None:
    """Fill this minute's and the next minute's window of both environments, so the next call is limited even
    across a boundary."""
    db.session.execute(
        sa.text(
            """
        INSERT INTO rate_limit_tracking (bucket, window_start, organization_id, count)
        SELECT 'org:' || CAST(:org AS text) || ':' || e.env, v.w, :org, :limit
        FROM (SELECT to_timestamp(floor(extract(epoch FROM statement_timestamp()) / 60) * 60) AS w) now_w,
             LATERAL (VALUES (now_w.w), (now_w.w + interval '1 minute')) AS v(w),
             (VALUES ('test'), ('live')) AS e(env)
        ON CONFLICT (bucket, window_start) DO UPDATE SET count = EXCLUDED.count
        """
        ),
        {"org": organization_id, "limit": limit},
    )
    db.session.commit()


def away_from_a_window_boundary(margin: float = 5.0) -> None:
    """Wait out the end of the current rate-limit window when it is near, so the next calls share one window."""
    into = time.time() % sql.WINDOW_SECONDS
    if into > sql.WINDOW_SECONDS - margin:
        time.sleep(sql.WINDOW_SECONDS - into + 0.05)
