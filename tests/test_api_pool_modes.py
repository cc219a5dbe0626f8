"""``DATABASE_POOL_MODE=transaction`` (portal/verification/pooling.py) decides every call as the prepared
statements do, on the test's transaction: single calls, groups, and the second statement of deferred calls; its
literals read the same whatever ``standard_conforming_strings`` is. tests/test_pgbouncer.py runs both modes
through a real PgBouncer."""

from __future__ import annotations

from typing import Any

import pytest

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys.policy import KeyPolicy
from portal.verification.backend import STATUS
from tests import factories
from tests.verification_doubles import TransactionBackend

AT = 9  # where a row has the database's time of the call
EXPECTED = ["ok", "ok", "insufficient_scope", "ip_not_allowed", "ok", "ok", "rate_limited", "revoked", None]


def calls(pepper: str) -> list[tuple[bytes, str | None, str | None]]:
    """One call of each kind, on a fresh organization's keys: (key hash, scope, client address)."""
    org = factories.org(plan="pro")
    owner = factories.member(org, "owner")

    def key(name: str, **policy: Any) -> bytes:
        issued = factories.api_key(org, owner, name=name, key_policy=KeyPolicy(**policy) if policy else None)
        return keyformat.key_hash(issued.plaintext, pepper)

    plain, scoped = key("plain"), key("scoped", scopes=["translate:read"])
    fenced, limited = key("fenced", allowed_ips="203.0.113.0/24"), key("limited", rate_limit=1)
    revoked = factories.api_key(org, owner, name="revoked")
    revoked.api_key.revoked_at = revoked.api_key.created_at
    db.session.commit()
    return [
        (plain, None, None),
        (scoped, "translate:read", "203.0.113.9"),
        (scoped, "it's\\x", None),  # a quote and a backslash in a literal
        (fenced, None, "198.51.100.1"),
        (fenced, None, "203.0.113.9"),
        (limited, None, None),
        (limited, None, None),
        (keyformat.key_hash(revoked.plaintext, pepper), None, None),
        (keyformat.key_hash(keyformat.generate("test"), pepper), None, None),
    ]


@pytest.mark.parametrize("standard_conforming_strings", ["on", "off"])
@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("grouped", [False, True], ids=["one_by_one", "grouped"])
def test_both_pool_modes_decide_alike(app, mode, standard_conforming_strings, grouped):
    dbapi = db.session.connection().connection.dbapi_connection
    with dbapi.cursor() as cur:
        cur.execute(f"SET LOCAL standard_conforming_strings = {standard_conforming_strings}")
    backend = TransactionBackend(dbapi, pool_mode=mode)
    todo = calls(app.config["API_KEY_PEPPER"])
    del dbapi.notices[:]
    if grouped:
        rows = backend.verify_many([c[0] for c in todo], [c[1] for c in todo], [c[2] for c in todo])
    else:
        rows = [backend.verify(*call) for call in todo]
    assert [row[STATUS] if row else None for row in rows] == EXPECTED
    assert {row[AT].utcoffset().total_seconds() for row in rows if row} == {0}
    assert dbapi.notices == []  # no "nonstandard use of \\ in a string literal"


def test_the_pool_mode_is_read_from_the_environment_and_checked_at_start(monkeypatch):
    from portal.config import Config, ConfigError

    monkeypatch.setenv("DATABASE_POOL_MODE", " Transaction ")
    assert Config.from_env()["DATABASE_POOL_MODE"] == "transaction"
    settings = {
        "SECRET_KEY": "s" * 32,
        "API_KEY_PEPPER": "p" * 32,
        "REMEMBER_COOKIE_DURATION": 1,
        "REMEMBER_MAX_AGE": 1,
    }
    Config.validate({**settings, "DATABASE_POOL_MODE": "transaction"})
    with pytest.raises(ConfigError, match="DATABASE_POOL_MODE must be session or transaction"):
        Config.validate({**settings, "DATABASE_POOL_MODE": "statement"})
