"""POST /v1/keys/revoke: whoever holds a key can kill it, without learning whether it existed."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.models import ApiKey, AuditEvent, OutboxMail
from tests import factories
from tests.api_helpers import verify
from tests.mail_helpers import deliver, only_mail_to


def _revoke(client, body, ip="203.0.113.5", **kwargs):
    return client.post("/v1/keys/revoke", json=body, environ_base={"REMOTE_ADDR": ip}, **kwargs)


def _events(org, action):
    return list(db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action=action)))


def _outbox():
    return list(db.session.scalars(sa.select(OutboxMail)))


@pytest.fixture
def small_window(app):
    saved = app.config["LEAK_REPORT_MAX_PER_IP"]
    app.config["LEAK_REPORT_MAX_PER_IP"] = 3
    yield 3
    app.config["LEAK_REPORT_MAX_PER_IP"] = saved


def test_a_live_key_is_revoked_at_once_audited_and_its_owners_are_mailed(client, org, owner, mail_server):
    second_owner = factories.member(org, "owner")
    developer = factories.member(org, "developer")
    issued = factories.api_key(org, owner, name="Deploy bot")
    assert verify(client, issued.plaintext).status_code == 200

    response = _revoke(client, {"key": issued.plaintext})

    assert response.status_code == 202 and response.get_json() == {"status": "accepted"}
    answer = verify(client, issued.plaintext)
    assert answer.status_code == 401 and answer.get_json()["code"] == "revoked"
    [event] = _events(org, "key.revoked")
    assert event.actor_id is None and event.actor_label == "Leak report (anonymous)"
    assert event.details["reason"] == "reported_leaked" and event.details["hint"] == issued.api_key.hint
    assert str(event.ip) == "203.0.113.5"
    # Owners only, each told which key and that it is revoked; the key itself is never in a mail.
    sent = deliver(mail_server)
    assert sorted(r.rcpt_tos[0] for r in sent) == sorted([owner.email, second_owner.email])
    assert developer.email not in [r.rcpt_tos[0] for r in sent]
    message = only_mail_to(sent, owner.email)
    assert "reported leaked and revoked" in message.message["Subject"]
    for part in ("plain", "html"):
        text = message.part(part)
        assert "Deploy bot" in text and issued.api_key.hint in text and issued.plaintext not in text
        assert f"/orgs/{org.slug}/keys/{issued.api_key.id}" in text


def test_the_audit_trail_says_reported_leaked(client, auth, org, owner):
    issued = factories.api_key(org, owner)
    _revoke(client, {"key": issued.plaintext})
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True)
    assert "reported leaked" in page and "Leak report (anonymous)" in page


def test_the_answer_never_tells_whether_the_key_existed(client, org, owner):
    live = factories.api_key(org, owner).plaintext
    revoked = factories.api_key(org, owner, name="old")
    key_services.revoke_key(org, revoked.api_key, owner)
    unknown = keyformat.generate("live")  # well-formed, never issued
    bad_checksum = live[:-1] + ("A" if live[-1] != "A" else "B")
    answers = [
        _revoke(client, {"key": candidate})
        for candidate in (live, revoked.plaintext, unknown, bad_checksum, "pk_live_short", live)
    ]
    assert {(a.status_code, a.get_data()) for a in answers} == {(202, answers[0].get_data())}
    assert answers[0].headers["Cache-Control"] == "no-store"
    # Only the live key changed, once: the second report of it and the others wrote nothing.
    assert len(_events(org, "key.revoked")) == 2  # the owner's own revocation, then the report
    assert len(_outbox()) == 1


def test_a_rolled_key_in_its_grace_period_stops_at_once(client, org, owner):
    old = factories.api_key(org, owner)
    key_services.roll_key(org, old.api_key, timedelta(days=7), owner)
    assert verify(client, old.plaintext).status_code == 200
    assert _revoke(client, {"key": old.plaintext}).status_code == 202
    assert verify(client, old.plaintext).get_json()["code"] == "revoked"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "not json", "content_type": "application/json"},
        {"json": ["pk_live_x"]},
        {"json": {"key": 12345}},
        {"json": {"key": "hello world"}},
        {"json": {"key": "sk_live_abcdef"}},
        {"json": {"token": "pk_live_abc"}},
        {"json": {"key": "pk_live_" + "a" * 300}},
        {"data": b"{" + b" " * 20000 + b"}", "content_type": "application/json"},
    ],
)
def test_a_body_that_is_not_a_key_is_a_400_json_error(client, kwargs):
    response = client.post("/v1/keys/revoke", environ_base={"REMOTE_ADDR": "203.0.113.9"}, **kwargs)
    assert response.status_code == 400
    assert set(response.get_json()["error"]) == {"code", "message"}


def test_requests_are_throttled_per_client_address(client, org, owner, small_window):
    issued = factories.api_key(org, owner)
    for _ in range(small_window):
        assert _revoke(client, {"key": keyformat.generate("test")}, ip="198.51.100.1").status_code == 202
    refused = _revoke(client, {"key": issued.plaintext}, ip="198.51.100.1")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["error"]["code"] == "rate_limited"
    # The refused report changed nothing; another address is not held back.
    assert db.session.get(ApiKey, issued.api_key.id).revoked_at is None
    assert _revoke(client, {"key": issued.plaintext}, ip="198.51.100.2").status_code == 202
    assert verify(client, issued.plaintext).get_json()["code"] == "revoked"


def test_answers_match_the_openapi_document(client, org, owner):
    from jsonschema import Draft202012Validator

    from tests.test_api_openapi import _inline

    document = client.get("/v1/openapi.json").get_json()
    operation = document["paths"]["/keys/revoke"]["post"]
    for response in (
        _revoke(client, {"key": factories.api_key(org, owner).plaintext}),
        _revoke(client, {"key": 5}),
    ):
        answer = _inline(operation["responses"][str(response.status_code)], document)
        schema = answer["content"]["application/json"]["schema"]
        assert not list(Draft202012Validator(schema).iter_errors(response.get_json()))
