"""Readiness: the database answers and its schema is at the code's newest migration. No Flask request here."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from portal.db import schema_warning

log = logging.getLogger("portal.ops")
READY_TIMEOUT_MS = 2000  # a probe waits this long at most for the query, once connected


@dataclass(frozen=True)
class Readiness:
    ready: bool
    code: str  # "ready", "database_unavailable" or "migrations_not_at_head"
    message: str
    revision: str | None = None  # the database's migration, when it answered


def check_readiness(engine: sa.Engine, head: str | None) -> Readiness:
    """Ask the database for its migration revision (one short query) and compare it with ``head``."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"SET LOCAL statement_timeout = {READY_TIMEOUT_MS}"))
            if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
                revision = None
            else:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.SQLAlchemyError as exc:
        # The reason (host, role) goes to the log only: the probe's answer is public.
        orig = getattr(exc, "orig", None)
        reason = (str(orig).strip().splitlines() or [""])[0] if orig else type(exc).__name__
        log.warning("readiness: the database did not answer: %s", reason)
        return Readiness(False, "database_unavailable", "The database does not answer.")
    warning = schema_warning(revision, head)
    if warning:
        return Readiness(False, "migrations_not_at_head", warning[0].upper() + warning[1:] + ".", revision)
    return Readiness(True, "ready", "The database answers and its migrations are at head.", revision)
