"""Garbage on the unauthenticated API: malformed and unknown keys are counted per minute and client address, and
an address that spends its budget of them is answered 429 without a database round trip."""

from __future__ import annotations

import random
import string
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from portal.api import get_verifier
from portal.extensions import db
from portal.keys import format as keyformat
from portal.usage import maintenance
from portal.verification.budget import InvalidKeyBudget
from tests.api_helpers import away_from_a_window_boundary, invalid_key_counts, usage_count, verify
from tests.test_api_openapi import _check

BUDGET = 60  # TestConfig's API_INVALID_KEY_BUDGET, as in production


def random_strings(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(n)]


def by_outcome(ip: str | None = None) -> dict[str, int]:
    counted: dict[str, int] = {}
    for (_, address, outcome), calls in invalid_key_counts().items():
        if ip is None or address == ip:
            counted[outcome] = counted.get(outcome, 0) + calls
    return counted


@pytest.fixture
def backend(app: Any) -> Any:
    """The test's verification backend, which counts the calls that reached the database."""
    return get_verifier(app).backend


def test_the_budget_is_the_configured_one(app):
    assert app.config["API_INVALID_KEY_BUDGET"] == get_verifier(app).budget.limit == BUDGET


def test_300_random_strings_write_no_usage_row_and_two_count_rows(client):
    away_from_a_window_boundary()
    answers = [verify(client, s, client_ip="198.51.100.7") for s in random_strings(300)]
    assert [a.status_code for a in answers] == [401] * BUDGET + [429] * (300 - BUDGET)
    assert {a.get_json()["code"] for a in answers[:BUDGET]} == {"malformed"}
    assert {a.get_json()["code"] for a in answers[BUDGET:]} == {"too_many_invalid_keys"}
    assert usage_count() == 0
    counts = invalid_key_counts()
    assert len(counts) == 2
    assert by_outcome("198.51.100.7") == {"malformed": BUDGET, "too_many_invalid_keys": 300 - BUDGET}
    assert {minute for minute, _, _ in counts} == {datetime.now(UTC).replace(second=0, microsecond=0)}


def test_after_the_budget_every_key_from_the_address_is_refused_without_the_database(
    client, backend, api_key, document
):
    """Unknown (well-formed) keys spend the budget after a lookup each; then nothing from the address reaches the
    database, not even a well-formed key (anyone can compute the checksum) or the address's valid key."""
    away_from_a_window_boundary()
    for _ in range(BUDGET):
        assert verify(client, keyformat.generate("live"), client_ip="203.0.113.5").get_json()["code"] == "unknown"
    looked_up = backend.calls
    assert looked_up == BUDGET
    for candidate in ("nope", keyformat.generate("test"), api_key.plaintext):
        refused = verify(client, candidate, client_ip="203.0.113.5")
        assert refused.status_code == 429
        assert refused.get_json() == {
            "valid": False,
            "code": "too_many_invalid_keys",
            "message": "Too many calls with malformed or unknown keys from this address; retry later.",
        }
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "WWW-Authenticate" not in refused.headers
        _check(document, refused)
    assert backend.calls == looked_up
    assert usage_count() == 0
    assert by_outcome("203.0.113.5") == {"unknown": BUDGET, "too_many_invalid_keys": 3}


def test_a_refused_address_needs_no_database_at_all(app, client):
    """With the backend replaced by one that fails on use, a spent address is still answered 429."""
    away_from_a_window_boundary()
    for s in random_strings(BUDGET):
        verify(client, s, client_ip="192.0.2.44")
    verifier = get_verifier(app)

    class Broken:
        def verify(self, *args: Any) -> None:
            raise AssertionError("the database was asked")

        def close(self) -> None:
            pass

    original, verifier.backend = verifier.backend, Broken()
    try:
        assert verify(client, keyformat.generate("live"), client_ip="192.0.2.44").status_code == 429
    finally:
        verifier.backend = original


def test_other_addresses_and_valid_keys_are_unaffected(client, api_key):
    away_from_a_window_boundary()
    for s in random_strings(BUDGET + 5):
        verify(client, s, client_ip="192.0.2.1")
    assert verify(client, "nope", client_ip="192.0.2.1").status_code == 429
    assert verify(client, api_key.plaintext, client_ip="192.0.2.2").status_code == 200
    assert verify(client, "nope", client_ip="192.0.2.2").get_json()["code"] == "malformed"
    assert verify(client, api_key.plaintext).status_code == 200  # the peer (the gateway) is another address
    assert usage_count() == 2


def test_valid_keys_do_not_spend_the_budget(client, api_key):
    away_from_a_window_boundary()
    for _ in range(BUDGET + 5):
        assert verify(client, api_key.plaintext, client_ip="192.0.2.3").status_code in (200, 429)
    assert verify(client, "nope", client_ip="192.0.2.3").get_json()["code"] == "malformed"
    assert "too_many_invalid_keys" not in by_outcome()


def test_without_client_ip_the_peer_address_is_budgeted_and_counted(client):
    away_from_a_window_boundary()
    for s in random_strings(BUDGET):
        client.post("/v1/keys/verify", json={"key": s}, environ_base={"REMOTE_ADDR": "203.0.113.80"})
    spent = client.post("/v1/keys/verify", json={"key": "x"}, environ_base={"REMOTE_ADDR": "203.0.113.80"})
    assert spent.status_code == 429
    other = client.post("/v1/keys/verify", json={"key": "x"}, environ_base={"REMOTE_ADDR": "203.0.113.81"})
    assert other.status_code == 401
    # A gateway that names its client is budgeted per client, not per gateway.
    named = verify(client, "x", client_ip="192.0.2.9")
    assert named.status_code == 401
    assert by_outcome("203.0.113.80") == {"malformed": BUDGET, "too_many_invalid_keys": 1}


def test_the_fast_path_and_the_flask_view_refuse_alike(app, client):
    away_from_a_window_boundary()
    for s in random_strings(BUDGET):
        verify(client, s, client_ip="192.0.2.50")
    fast = verify(client, "x", client_ip="192.0.2.50")
    fast_path = app.extensions["portal.verify_fast_path"]
    fast_path.enabled = False
    try:
        slow = verify(client, "x", client_ip="192.0.2.50")
    finally:
        fast_path.enabled = True
    assert (fast.status_code, fast.get_json()) == (slow.status_code, slow.get_json())
    assert fast.headers["Retry-After"] and slow.headers["Retry-After"]


def test_require_api_key_is_budgeted_per_request_address(client, api_key):
    away_from_a_window_boundary()
    for s in random_strings(BUDGET, seed=3):
        token = s.replace(" ", "x")
        client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    refused = client.get("/v1/whoami", headers={"Authorization": f"Bearer {api_key.plaintext}"})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_invalid_keys"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    elsewhere = client.get(
        "/v1/whoami",
        headers={"Authorization": f"Bearer {api_key.plaintext}"},
        environ_base={"REMOTE_ADDR": "192.0.2.77"},
    )
    assert elsewhere.status_code == 200
    assert by_outcome("127.0.0.1") == {"malformed": BUDGET, "too_many_invalid_keys": 1}


def test_counts_are_per_minute_address_and_outcome(app):
    recorder = get_verifier(app).recorder
    t0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    calls = [
        (t0, "192.0.2.1", "malformed"),
        (t0 + timedelta(seconds=50), "192.0.2.1", "malformed"),
        (t0 + timedelta(seconds=59.9), "192.0.2.1", "unknown"),
        (t0 + timedelta(seconds=60), "192.0.2.1", "malformed"),  # the next minute
        (t0, "2001:db8::1", "malformed"),
        (t0, None, "malformed"),
        (t0 + timedelta(seconds=1), None, "malformed"),
        (t0, None, "too_many_invalid_keys"),
    ]
    for at, ip, outcome in calls:
        recorder.count_invalid(at, ip, outcome)
    minute = t0
    assert invalid_key_counts() == {
        (minute, "192.0.2.1", "malformed"): 2,
        (minute, "192.0.2.1", "unknown"): 1,
        (minute + timedelta(minutes=1), "192.0.2.1", "malformed"): 1,
        (minute, "2001:db8::1", "malformed"): 1,
        (minute, None, "malformed"): 2,
        (minute, None, "too_many_invalid_keys"): 1,
    }


def test_counts_are_pruned_with_the_raw_events(app):
    recorder = get_verifier(app).recorder
    now = datetime.now(UTC)
    recorder.count_invalid(now - timedelta(days=100), "192.0.2.1", "malformed")
    recorder.count_invalid(now - timedelta(days=1), "192.0.2.1", "malformed")
    result = app.test_cli_runner().invoke(args=["usage", "prune", "--older-than", "90d"])
    assert result.exit_code == 0 and "1 invalid-key count older than 90 days" in result.output
    assert [minute.date() for minute, _, _ in invalid_key_counts()] == [(now - timedelta(days=1)).date()]
    assert maintenance.prune_invalid_key_counts(timedelta(days=90)) == 0


def test_records_of_replayed_spill_files_are_pruned_with_the_rollups(app):
    """A record keeps a spill file still on disk from counting twice in the rollups: it goes with them, not with
    the raw events."""
    old, recent = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    db.session.execute(
        sa.text(
            "INSERT INTO usage_spill_replays (id, replayed_at, usage_rows, invalid_key_calls)"
            " VALUES (:old, :long_ago, 3, 0), (:recent, :lately, 2, 1)"
        ),
        {"old": old, "recent": recent, "long_ago": now - timedelta(days=401), "lately": now - timedelta(days=91)},
    )
    try:
        result = app.test_cli_runner().invoke(args=["usage", "prune", "--older-than", "90d"])
        assert result.exit_code == 0, result.output
        assert "and 1 record of replayed spill files older than 400 days" in result.output
        kept = db.session.scalars(
            sa.text("SELECT id FROM usage_spill_replays WHERE id IN (:old, :recent)"), {"old": old, "recent": recent}
        ).all()
        assert kept == [recent]
    finally:
        db.session.execute(
            sa.text("DELETE FROM usage_spill_replays WHERE id IN (:old, :recent)"), {"old": old, "recent": recent}
        )
        db.session.commit()


# The budget itself, on a clock of our own.


class Clock:
    def __init__(self, now: float = 6_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_budget_refuses_until_the_window_ends():
    clock = Clock(6_000.0 + 15)  # 15 s into a minute
    budget = InvalidKeyBudget(3, clock=clock)
    for _ in range(2):
        budget.spend("a")
    assert budget.retry_after("a") is None
    budget.spend("a")
    assert budget.retry_after("a") == 45
    assert budget.retry_after("b") is None
    clock.now += 44.5
    assert budget.retry_after("a") == 1
    clock.now += 0.5  # the next window
    assert budget.retry_after("a") is None
    budget.spend("a")
    assert budget.retry_after("a") is None and len(budget) == 1


def test_budget_memory_is_bounded():
    clock = Clock()
    budget = InvalidKeyBudget(2, max_addresses=100, clock=clock)
    for i in range(1_000):
        budget.spend(f"10.0.{i // 256}.{i % 256}")
        budget.spend(f"10.0.{i // 256}.{i % 256}")
    assert len(budget) == 100
    assert budget.uncounted == 1_800
    assert budget.retry_after("10.0.0.0") == 60  # the addresses it counts are still refused
    assert budget.retry_after("10.0.3.200") is None  # beyond the bound: uncounted, not refused
    clock.now += 60
    budget.spend("10.0.3.200")
    assert len(budget) == 1  # a new window starts with an empty table


def test_no_budget_and_no_address_refuse_nothing():
    off = InvalidKeyBudget(0)
    for _ in range(10):
        off.spend("a")
        off.spend(None)
    assert off.retry_after("a") is None and off.retry_after(None) is None and len(off) == 0


@pytest.fixture
def document(client) -> dict[str, Any]:
    return client.get("/v1/openapi.json").get_json()


@pytest.fixture
def behind_proxy(app: Any) -> Any:
    from portal import trust_proxy

    plain = app.wsgi_app
    trust_proxy(app)
    yield app
    app.wsgi_app = plain


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_peer(behind_proxy, client):
    """The proxy fix wraps the verification fast path too: without ``client_ip`` the forwarded client is
    counted, not the proxy every call comes through."""
    for s in random_strings(3):
        client.post("/v1/keys/verify", json={"key": s}, headers={"X-Forwarded-For": "203.0.113.200"})
    assert by_outcome("203.0.113.200") == {"malformed": 3}
    assert by_outcome("127.0.0.1") == {}


def test_the_proxy_setting_wraps_the_fast_path(app, monkeypatch):
    from portal import create_app
    from portal.proxy import ValidForwardedFor

    monkeypatch.setenv("PORTAL_TRUST_PROXY", "1")
    proxied = create_app({"SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]}, env="testing")
    assert isinstance(proxied.wsgi_app, ValidForwardedFor)
    get_verifier(proxied).close()
