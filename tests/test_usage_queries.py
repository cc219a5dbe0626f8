"""Page views read the rollups: raw events are only ever read for one key, never scanned for a dashboard."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.usage.ranges import floor_hour
from tests import factories
from tests.usage_helpers import event, record

# A raw-event read the pages may make: bounded by one key (its recent calls, its last call).
KEY_BOUNDED = re.compile(r"FROM api_key_usage\s+WHERE key_id = %\(key\)s")


@pytest.fixture
def statements() -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement sent to PostgreSQL while the fixture is active, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def before_cursor_execute(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        seen.append((statement, params))

    event_target = db.engine  # the tests' one connection comes from this engine, so it hears this too
    sa.event.listen(event_target, "before_cursor_execute", before_cursor_execute)
    try:
        yield seen
    finally:
        sa.event.remove(event_target, "before_cursor_execute", before_cursor_execute)


@pytest.fixture
def used_key(org, owner):
    key = factories.api_key(org, owner, environment="live").api_key
    hour = floor_hour(datetime.now(UTC))
    record([event(key, hour - timedelta(hours=h, minutes=m)) for h in range(30) for m in (0, 20, 40)])
    return key


def raw_reads(seen: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(sql, params) for sql, params in seen if "api_key_usage" in sql]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?range=30d&bucket=day",
        "?range=24h&tz=Asia/Tokyo",
        "?range=custom&start=2026-01-01&end=2026-01-02",  # nothing in range: "any usage at all?" is asked too
    ],
)
def test_dashboard_never_reads_raw_events(client, auth, org, owner, used_key, statements, query):
    auth.login(owner)
    statements.clear()
    for url in (f"/orgs/{org.slug}/usage{query}", f"/orgs/{org.slug}/usage.csv{query}"):
        assert client.get(url).status_code == 200
    assert any("usage_org_hourly" in sql for sql, _ in statements)  # the recorder does hear the page
    assert raw_reads(statements) == []


def test_key_page_reads_raw_events_of_that_key_only(client, auth, org, owner, used_key, statements):
    auth.login(owner)
    statements.clear()
    html = client.get(f"/orgs/{org.slug}/keys/{used_key.id}/usage?range=7d").get_data(as_text=True)
    assert "Recent calls" in html
    reads = raw_reads(statements)
    assert len(reads) >= 2  # recent calls and last call
    for sql, params in reads:
        assert KEY_BOUNDED.search(sql), sql
        assert str(params["key"]) == str(used_key.id)
    assert any("usage_key_hourly" in sql for sql, _ in statements)
