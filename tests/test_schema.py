"""The database itself refuses bad data, whatever code (or person with psql) writes it.

Each bad insert has a matching good insert, so a failure is known to come from the bad value alone.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import ApiKey
from portal.timeutil import utcnow
from portal.verification.usage_writer import write_usage_rows
from tests import factories

CORE_TABLES = ("organizations", "users", "api_keys", "audit_events")


def _insert(sql: str, **params: Any) -> None:
    with db.session.begin_nested():
        db.session.execute(sa.text(sql), params)


def _refused(sql: str, **params: Any) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert(sql, **params)


def _org_sql() -> str:
    return "INSERT INTO organizations (name, slug, plan) VALUES ('Raw', :slug, :plan)"


def _digest() -> bytes:
    return hashlib.sha256(secrets.token_bytes(16)).digest()


def test_unknown_plan_is_refused():
    _insert(_org_sql(), slug="raw-ok", plan="pro")
    _refused(_org_sql(), slug="raw-gold", plan="gold")


def test_unknown_role_is_refused(org):
    sql = "INSERT INTO memberships (user_id, organization_id, role) VALUES (:user_id, :org_id, :role)"
    _insert(sql, user_id=factories.user().id, org_id=org.id, role="viewer")
    _refused(sql, user_id=factories.user().id, org_id=org.id, role="root")


def test_unknown_environment_is_refused(org):
    sql = (
        "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash) "
        "VALUES (:org_id, 'Raw', :environment, 'pk_test_…abcd', :key_hash)"
    )
    _insert(sql, org_id=org.id, environment="live", key_hash=_digest())
    _refused(sql, org_id=org.id, environment="prod", key_hash=_digest())


def test_unknown_usage_outcome_is_refused(org):
    sql = "INSERT INTO api_key_usage (organization_id, status_code, outcome) VALUES (:org_id, 200, :outcome)"
    _insert(sql, org_id=org.id, outcome="ok")
    _refused(sql, org_id=org.id, outcome="bogus")


def test_duplicate_key_hash_is_refused(org, owner):
    existing = factories.api_key(org, owner).api_key
    sql = (
        "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash) "
        "VALUES (:org_id, 'Copy', 'test', 'pk_test_…abcd', :key_hash)"
    )
    _refused(sql, org_id=org.id, key_hash=existing.key_hash)
    _insert(sql, org_id=org.id, key_hash=_digest())


def test_email_is_unique_ignoring_case():
    sql = "INSERT INTO users (email, display_name, password_hash) VALUES (:email, 'Raw', 'x')"
    _insert(sql, email="a@x.com")
    _refused(sql, email="A@x.com")
    _insert(sql, email="b@x.com")


def _columns(column: str) -> dict[str, dict[str, Any]]:
    rows = db.session.execute(
        sa.text(
            "SELECT table_name, data_type, column_default, is_nullable FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name = :column AND table_name = ANY(:tables)"
        ),
        {"column": column, "tables": list(CORE_TABLES)},
    ).mappings()
    return {row["table_name"]: dict(row) for row in rows}


def test_primary_keys_are_server_generated_uuids():
    ids = _columns("id")
    assert set(ids) == set(CORE_TABLES)
    for table, column in ids.items():
        assert column["data_type"] == "uuid", table
        assert column["column_default"] == "gen_random_uuid()", table
    primary_keys = db.session.execute(
        sa.text(
            "SELECT c.relname, array_agg(a.attname::text) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indisprimary AND c.relname = ANY(:tables) GROUP BY c.relname"
        ),
        {"tables": list(CORE_TABLES)},
    ).all()
    assert dict(primary_keys) == {table: ["id"] for table in CORE_TABLES}
    # And the default really fires: a row inserted without an id gets a fresh UUID.
    new_id = db.session.execute(
        sa.text("INSERT INTO organizations (name, slug) VALUES ('Raw', 'raw-id') RETURNING id")
    ).scalar_one()
    assert new_id.version == 4


def test_created_at_is_timestamptz_and_always_set():
    created = _columns("created_at")
    assert set(created) == set(CORE_TABLES)
    for table, column in created.items():
        assert column["data_type"] == "timestamp with time zone", table
        assert column["is_nullable"] == "NO", table
        assert column["column_default"] == "now()", table


def test_touching_last_used_of_a_full_page_of_keys_writes_no_index_entry(org):
    """The usage writer's last_used_at touch is a HOT update even where the keys filled their pages: a flush
    touches the keys used in it (here every fifth), and each page has room for their new versions."""
    org_id = org.id
    db.session.execute(
        sa.text(
            "INSERT INTO api_keys (organization_id, name, environment, hint, key_hash, external_id) "
            "SELECT :org, 'key ' || i, 'live', 'pk_live_…' || lpad(i::text, 4, '0'), "
            "sha256(convert_to(i::text || :salt, 'UTF8')), 'customer-' || i FROM generate_series(1, 300) i"
        ),
        {"org": org_id, "salt": secrets.token_hex(8)},
    )
    before = db.session.execute(
        sa.text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'api_keys'")
    ).one()
    rows = [
        (str(key_id), str(org_id), utcnow(), "/x", 200, 1.0, "ok", None, None)
        for key_id in db.session.scalars(sa.select(ApiKey.id).where(ApiKey.organization_id == org_id))
    ][::5]
    with db.session.connection().connection.cursor() as cursor:
        write_usage_rows(cursor, rows)
    after = db.session.execute(
        sa.text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'api_keys'")
    ).one()
    updated, hot = after[0] - before[0], after[1] - before[1]
    assert updated == len(rows) == 60
    # fillfactor 80 (migration 0020); at 100 every one moves its row to another page. The first page may hold the
    # table's earlier rows, updated by earlier tests, so one or two touches there may not fit.
    assert hot >= updated - 3
