"""Helpers for the usage tests: write raw events the way any writer would (multi-row INSERTs)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import sqlalchemy as sa

from portal.extensions import db

INSERT = sa.text(
    "INSERT INTO api_key_usage"
    " (key_id, organization_id, occurred_at, endpoint, status_code, latency_ms, outcome, client_ip, user_agent)"
    " SELECT * FROM unnest(CAST(:keys AS uuid[]), CAST(:orgs AS uuid[]), CAST(:ats AS timestamptz[]),"
    " CAST(:endpoints AS text[]), CAST(:statuses AS int[]), CAST(:latencies AS float8[]),"
    " CAST(:outcomes AS text[]), CAST(:ips AS inet[]), CAST(:agents AS text[]))"
)
ENSURE_PARTITION = sa.text("SELECT usage_partitions_ensure(:at, :at)")
STATUS = {
    "ok": 200,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "forbidden": 403,
    "revoked": 401,
    "expired": 401,
    "unknown": 401,
    "malformed": 400,
}


def event(
    key: Any,
    at: datetime,
    outcome: str = "ok",
    endpoint: str | None = "/v1/translate",
    org_id: uuid.UUID | None = None,
    latency: float = 5.0,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> tuple[Any, ...]:
    """One call; ``key`` is an ApiKey (or None for calls no key could be matched to)."""
    organization = org_id if org_id is not None else (key.organization_id if key is not None else None)
    return (
        key.id if key is not None else None,
        organization,
        at,
        endpoint,
        STATUS[outcome],
        latency,
        outcome,
        client_ip,
        user_agent,
    )


def record(events: list[tuple[Any, ...]], connection: Any = None) -> None:
    """Insert ``events`` in ONE statement, so the rollup trigger sees them together."""
    columns = list(zip(*(e + (None,) * (9 - len(e)) for e in events), strict=True))
    params = {
        "keys": [str(v) if v else None for v in columns[0]],
        "orgs": [str(v) if v else None for v in columns[1]],
        "ats": list(columns[2]),
        "endpoints": list(columns[3]),
        "statuses": list(columns[4]),
        "latencies": list(columns[5]),
        "outcomes": list(columns[6]),
        "ips": list(columns[7]),
        "agents": list(columns[8]),
    }
    target = connection or db.session
    # Each day's partition, as a writer gets it (the migration made only today's and the next week's).
    for at in {at.astimezone(UTC).date(): at for at in params["ats"]}.values():
        target.execute(ENSURE_PARTITION, {"at": at})
    target.execute(INSERT, params)


def rollup(table: str, where: str, **params: Any) -> list[Any]:
    """Rows of a rollup table, after folding what the trigger left pending (as every page does first)."""
    db.session.execute(sa.text("SELECT usage_rollup_fold()"))
    return list(db.session.execute(sa.text(f"SELECT * FROM {table} WHERE {where}"), params))  # noqa: S608


class _Tables(HTMLParser):
    """Collects each <table id=…> as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._current = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._current] = []
        elif tag == "tr" and self._current:
            self.tables[self._current].append([])
        elif tag in ("td", "th") and self._current:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._current and self._cell is not None:
            self.tables[self._current][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))
