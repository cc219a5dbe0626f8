"""Readiness: the database answers and this code's newest migration is applied. No Flask request here.

A database *ahead* of the code (at a revision none of this code's migrations define) is ready too: a rolling
deploy migrates first (``flask db upgrade`` from the new release), then replaces the instances one by one, with
migrations that keep the previous release working meanwhile. Answering 503 then would take every old instance
out of the load balancer at once, before any new one is up. Behind, empty, or at an older revision this code
knows is not ready: the code would query tables and columns that are not there yet.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from portal.db import database_ahead, schema_warning

log = logging.getLogger("portal.ops")
READY_TIMEOUT_MS = 2000  # a probe waits this long at most for the query, once connected
AHEAD = "database_ahead"
_ahead_logged = [False]  # whether this process has logged that the database is ahead (probes come every few s)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    code: str  # "ready", AHEAD (ready too), "database_unavailable" or "migrations_not_at_head"
    message: str
    revision: str | None = None  # the database's migration, when it answered


def check_readiness(engine: sa.Engine, head: str | None, known: Collection[str]) -> Readiness:
    """Ask the database for its migration revision (one short query) and compare it with ``head`` and the other
    revisions this code ``known``s."""
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
    if database_ahead(revision, head, known):
        if not _ahead_logged[0]:
            _ahead_logged[0] = True
            log.warning(
                "readiness: %s; still ready, so a rolling deploy keeps this instance until it is replaced",
                schema_warning(revision, head, known),
            )
        return Readiness(True, AHEAD, f"database ahead of this code (revision {revision}; code head {head})", revision)
    warning = schema_warning(revision, head, known)
    if warning:
        return Readiness(False, "migrations_not_at_head", warning[0].upper() + warning[1:] + ".", revision)
    return Readiness(True, "ready", "The database answers and its migrations are at head.", revision)
