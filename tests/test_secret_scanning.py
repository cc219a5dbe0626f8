"""POST /v1/secret-scanning/report: GitHub's partner program, with signatures checked against configured keys."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys import services as key_services
from portal.keys.scanning import ScanningConfigError, parse_public_keys
from portal.models import ApiKey, AuditEvent, Organization, OutboxMail
from tests import factories
from tests.api_helpers import verify
from tests.mail_helpers import deliver, only_mail_to

KEY_ID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"
PATH = "/v1/secret-scanning/report"


def _pem(private: ec.EllipticCurvePrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def signer(app) -> Iterator[ec.EllipticCurvePrivateKey]:
    """A P-256 key pair made for this test; its public half is the configured GitHub key."""
    private = ec.generate_private_key(ec.SECP256R1())
    saved = app.config["SECRET_SCANNING_PUBLIC_KEYS"]
    app.config["SECRET_SCANNING_PUBLIC_KEYS"] = json.dumps({KEY_ID: _pem(private)})
    yield private
    app.config["SECRET_SCANNING_PUBLIC_KEYS"] = saved


def _sign(private: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    return base64.b64encode(private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


def _report(client, private, items: Any, *, key_id: str = KEY_ID, signature: str | None = None, body=None):
    raw = body if body is not None else json.dumps(items).encode()
    headers = {"Github-Public-Key-Identifier": key_id, "Github-Public-Key-Signature": signature or _sign(private, raw)}
    return client.post(PATH, data=raw, headers=headers, content_type="application/json")


def _item(token: str, url: str = "https://github.com/octo/repo/blob/main/.env") -> dict[str, str]:
    return {"token": token, "type": "procode_api_key", "url": url, "source": "content"}


def _events(org, action):
    return list(db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action=action)))


def _set_action(org, action):
    db.session.get(Organization, org.id).leak_action = action
    db.session.commit()


def test_each_token_gets_its_label_and_notify_is_the_default(client, org, owner, signer, mail_server):
    live = factories.api_key(org, owner, name="CI key")
    revoked = factories.api_key(org, owner, name="Old key")
    key_services.revoke_key(org, revoked.api_key, owner)
    unknown = keyformat.generate("live")
    items = [_item(live.plaintext), _item(revoked.plaintext), _item(unknown), _item("pk_live_nonsense")]

    response = _report(client, signer, items)

    assert response.status_code == 200
    assert response.get_json() == [
        {"token_raw": live.plaintext, "token_type": "procode_api_key", "label": "true_positive"},
        {"token_raw": revoked.plaintext, "token_type": "procode_api_key", "label": "true_positive"},
        {"token_raw": unknown, "token_type": "procode_api_key", "label": "false_positive"},
        {"token_raw": "pk_live_nonsense", "token_type": "procode_api_key", "label": "false_positive"},
    ]
    # Notify (the default): the key keeps working, the trail and the owners are told.
    assert verify(client, live.plaintext).status_code == 200
    [event] = _events(org, "key.leak_reported")
    assert event.actor_id is None and event.details["reason"] == "reported_leaked"
    assert event.details["url"] == "https://github.com/octo/repo/blob/main/.env"
    message = only_mail_to(deliver(mail_server), owner.email)
    assert "reported leaked: " in message.message["Subject"]
    text = message.part("plain")
    assert "CI key" in text and "The key still works" in text and "github.com/octo/repo" in text


def test_revoke_action_revokes_and_mails(client, org, owner, signer, mail_server):
    _set_action(org, "revoke")
    live = factories.api_key(org, owner, name="CI key", environment="live")
    response = _report(client, signer, [_item(live.plaintext), _item(live.plaintext)])
    assert [a["label"] for a in response.get_json()] == ["true_positive", "true_positive"]
    assert verify(client, live.plaintext).get_json()["code"] == "revoked"
    [event] = _events(org, "key.revoked")  # one key reported twice in a batch is handled once
    assert event.details["reason"] == "reported_leaked" and event.details["source"] == "secret_scanning"
    message = only_mail_to(deliver(mail_server), owner.email)
    assert "revoked" in message.message["Subject"] and "The key is revoked" in message.part("html")


def test_each_organization_gets_its_own_action(client, org, owner, signer):
    other = factories.org()
    other_owner = factories.member(other, "owner")
    _set_action(other, "revoke")
    mine = factories.api_key(org, owner).plaintext
    theirs = factories.api_key(other, other_owner).plaintext
    _report(client, signer, [_item(mine), _item(theirs)])
    assert verify(client, mine).status_code == 200
    assert verify(client, theirs).get_json()["code"] == "revoked"


@pytest.mark.parametrize(
    "tamper",
    ["missing_signature", "missing_key_id", "unknown_key_id", "other_key", "changed_body", "not_base64"],
)
def test_a_bad_or_missing_signature_is_401_and_changes_nothing(client, org, owner, signer, tamper):
    _set_action(org, "revoke")
    live = factories.api_key(org, owner)
    body = json.dumps([_item(live.plaintext)]).encode()
    headers = {"Github-Public-Key-Identifier": KEY_ID, "Github-Public-Key-Signature": _sign(signer, body)}
    if tamper == "missing_signature":
        del headers["Github-Public-Key-Signature"]
    elif tamper == "missing_key_id":
        del headers["Github-Public-Key-Identifier"]
    elif tamper == "unknown_key_id":
        headers["Github-Public-Key-Identifier"] = "someone-else"
    elif tamper == "other_key":
        headers["Github-Public-Key-Signature"] = _sign(ec.generate_private_key(ec.SECP256R1()), body)
    elif tamper == "changed_body":
        body = json.dumps([_item(live.plaintext, url="https://example.com/other")]).encode()
    else:
        headers["Github-Public-Key-Signature"] = "%%% not base64 %%%"
    response = client.post(PATH, data=body, headers=headers, content_type="application/json")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_signature"
    assert db.session.get(ApiKey, live.api_key.id).revoked_at is None
    assert not _events(org, "key.revoked") and not _events(org, "key.leak_reported")
    assert not db.session.scalars(sa.select(OutboxMail)).all()


def test_without_configured_keys_every_report_is_refused(app, client, org, owner):
    private = ec.generate_private_key(ec.SECP256R1())
    assert app.config["SECRET_SCANNING_PUBLIC_KEYS"] is None
    response = _report(client, private, [_item(factories.api_key(org, owner).plaintext)])
    assert response.status_code == 401


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b"[]", b'["pk_live_x"]', b'[{"type": "x"}]', b'[{"token": 5}]', b'[{"token": ""}]'],
)
def test_a_signed_body_that_is_not_a_report_is_400(client, signer, body):
    response = _report(client, signer, None, body=body)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_report"


def test_keys_may_be_configured_as_a_file_in_githubs_own_format(app, client, org, owner, tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    document = {"public_keys": [{"key_identifier": "k2", "key": _pem(private), "is_current": True}]}
    path = tmp_path / "github-keys.json"
    path.write_text(json.dumps(document))
    saved = app.config["SECRET_SCANNING_PUBLIC_KEYS"]
    app.config["SECRET_SCANNING_PUBLIC_KEYS"] = str(path)
    try:
        token = factories.api_key(org, owner).plaintext
        response = _report(client, private, [_item(token)], key_id="k2")
    finally:
        app.config["SECRET_SCANNING_PUBLIC_KEYS"] = saved
    assert response.status_code == 200 and response.get_json()[0]["label"] == "true_positive"


@pytest.mark.parametrize(
    "setting",
    ["{not json", "/nonexistent/keys.json", '{"k": "not a pem"}', '["a list"]'],
)
def test_a_broken_key_setting_is_refused_with_a_reason(setting):
    with pytest.raises(ScanningConfigError):
        parse_public_keys(setting)


def test_rsa_keys_are_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ScanningConfigError, match="P-256"):
        parse_public_keys({"k": pem})


def _checked(page: str) -> str:
    [value] = re.findall(r'<input checked[^>]*name="action"[^>]*value="(\w+)"', page)
    return value


def test_owners_choose_the_action_on_the_settings_page_and_it_is_audited(client, auth, org, owner, member):
    auth.login(owner)
    page = client.get(f"/orgs/{org.slug}/settings").get_data(as_text=True)
    assert "Leaked keys" in page and _checked(page) == "notify"
    response = client.post(f"/orgs/{org.slug}/settings/leak-response", data={"action": "revoke"})
    assert response.status_code == 302
    assert db.session.get(Organization, org.id).leak_action == "revoke"
    [event] = _events(org, "org.leak_action_changed")
    assert event.actor_id == owner.id and event.details == {"from": "notify", "to": "revoke"}
    assert _checked(client.get(f"/orgs/{org.slug}/settings").get_data(as_text=True)) == "revoke"
    # Bad input is a form error, not a 500; nothing changes.
    response = client.post(f"/orgs/{org.slug}/settings/leak-response", data={"action": "delete-everything"})
    assert response.status_code == 422 and "Not a valid choice" in response.get_data(as_text=True)
    assert db.session.get(Organization, org.id).leak_action == "revoke"
    # Only owners.
    auth.logout()
    auth.login(member)
    assert client.post(f"/orgs/{org.slug}/settings/leak-response", data={"action": "notify"}).status_code == 403
    assert db.session.get(Organization, org.id).leak_action == "revoke"
