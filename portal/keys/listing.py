"""The key list's search, filters and sort orders: what a query string may ask for, and the SQL it becomes.

Plain rules, no Flask: the view hands over the query string, the service applies the result. A value the list
does not know is dropped with a message naming it, so a hand-edited or stale link still shows a list.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from portal import scopes as scope_catalogue
from portal.models import ENVIRONMENTS, KEY_STATUSES, ApiKey

MAX_SEARCH = 128
FULL_ACCESS = "full"  # the scope filter's choice for keys without scopes (NULL = full access)

STATUS_LABELS: dict[str, str] = {
    "active": "Active",
    "expiring": "Expiring (rolled, in grace period)",
    "expired": "Expired",
    "revoked": "Revoked",
}

DEFAULT_SORT = "newest"
SORTS: dict[str, str] = {
    "newest": "Newest first",
    "oldest": "Oldest first",
    "last_used": "Recently used first",
}


@dataclass(frozen=True)
class KeyFilters:
    """What the list is narrowed to; ``None`` means no restriction."""

    q: str | None = None
    env: str | None = None
    status: str | None = None
    creator: uuid.UUID | None = None
    scope: str | None = None  # a scope from the catalogue, or FULL_ACCESS
    sort: str = DEFAULT_SORT

    @property
    def narrowed(self) -> bool:
        """Whether any search or filter is set (the sort order narrows nothing)."""
        return any(v is not None for k, v in asdict(self).items() if k != "sort")

    def query_args(self) -> dict[str, str]:
        """The query string that asks for this list again (pagination links, the list after a bulk revoke)."""
        args = {k: str(v) for k, v in asdict(self).items() if v is not None}
        if self.sort == DEFAULT_SORT:
            del args["sort"]
        return args


def parse(args: Mapping[str, str], creators: Collection[uuid.UUID]) -> tuple[KeyFilters, list[str]]:
    """Filters from a query string, and a message for each value that was not understood and so ignored.

    ``creators`` are the ids the creator filter offers; any other id is ignored, never looked up."""
    problems: list[str] = []

    def choice(name: str, allowed: Collection[str], label: str) -> str | None:
        value = (args.get(name) or "").strip()
        if not value:
            return None
        if value not in allowed:
            problems.append(f"Unknown {label} “{value[:40]}”: that filter is ignored.")
            return None
        return value

    q = (args.get("q") or "").strip()[:MAX_SEARCH] or None
    if q is not None and any(ord(c) < 32 for c in q):
        problems.append("The search cannot contain control characters: it is ignored.")
        q = None
    creator = None
    creator_text = choice("creator", {str(c) for c in creators}, "creator")
    if creator_text is not None:
        creator = uuid.UUID(creator_text)
    filters = KeyFilters(
        q=q,
        env=choice("env", ENVIRONMENTS, "environment"),
        status=choice("status", KEY_STATUSES, "status"),
        creator=creator,
        scope=choice("scope", (*scope_catalogue.SCOPES, FULL_ACCESS), "scope"),
        sort=choice("sort", SORTS, "sort order") or DEFAULT_SORT,
    )
    return filters, problems


def like_pattern(text: str) -> str:
    """``text`` anywhere, with LIKE's wildcards taken literally (PostgreSQL's escape character is ``\\``)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def conditions(filters: KeyFilters, moment: datetime) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses for ``filters``; status is evaluated at ``moment``, as the page shows it."""
    where: list[sa.ColumnElement[bool]] = []
    if filters.q:
        pattern = like_pattern(filters.q)
        where.append(sa.or_(ApiKey.name.ilike(pattern), ApiKey.hint.ilike(pattern), ApiKey.external_id.ilike(pattern)))
    if filters.env:
        where.append(ApiKey.environment == filters.env)
    if filters.status:
        where.append(ApiKey.status_sql(moment) == filters.status)
    if filters.creator:
        where.append(ApiKey.created_by_id == filters.creator)
    if filters.scope == FULL_ACCESS:
        where.append(ApiKey.scopes.is_(None))
    elif filters.scope:
        where.append(ApiKey.scopes.contains([filters.scope]))
    return where


def ordering(sort: str) -> tuple[Any, ...]:
    """ORDER BY for a sort name; the id makes the order total, so pages never overlap or skip a key."""
    if sort == "oldest":
        return (ApiKey.created_at.asc(), ApiKey.id.asc())
    if sort == "last_used":
        return (ApiKey.last_used_at.desc().nulls_last(), ApiKey.created_at.desc(), ApiKey.id.desc())
    return (ApiKey.created_at.desc(), ApiKey.id.desc())
