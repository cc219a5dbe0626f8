"""Every action event of the catalogue, from the action a member (or a leak report) takes: the event's data, who
is mailed, and the mail as the real SMTP server on loopback receives it. The scheduled events are in
tests/test_notify_scheduler.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys import leaks
from portal.keys import services as key_services
from portal.models import Membership, NotificationEvent, NotificationRule
from portal.notify.catalogue import EVENTS
from portal.notify.scheduler import SCHEDULED_EVENTS
from portal.orgs import invitations
from portal.orgs import services as org_services
from portal.timeutil import utcnow
from tests import factories
from tests.mail_helpers import deliver, only_mail_to


@pytest.fixture
def team(org, owner):
    """The organization's people: the owner who acts, a second owner, an admin and a developer."""
    return {
        "owner": owner,
        "other_owner": factories.member(org, "owner"),
        "admin": factories.member(org, "admin"),
        "developer": factories.member(org, "developer"),
    }


def _rule(org, event_type, audience, addresses=()):
    db.session.add(
        NotificationRule(organization_id=org.id, event_type=event_type, audience=audience, addresses=list(addresses))
    )
    db.session.commit()


def _only_event(org, kind):
    [event] = db.session.scalars(sa.select(NotificationEvent).filter_by(organization_id=org.id, type=kind))
    assert event.payload["type"] == kind and event.payload["organization"]["slug"] == org.slug
    return event


def _label(user):
    return f"{user.display_name} <{user.email}>"


def _to(sent):
    return sorted(r.rcpt_tos[0] for r in sent)


def _membership(org, user):
    return db.session.scalar(sa.select(Membership).filter_by(organization_id=org.id, user_id=user.id))


def test_every_event_of_the_catalogue_is_covered():
    action_events = {
        "key.created",
        "key.rolled",
        "key.revoked",
        "key.leak_reported",
        "member.joined",
        "member.removed",
    }
    assert set(EVENTS) == action_events | set(SCHEDULED_EVENTS)


def test_key_created_is_mailed_only_once_chosen_and_never_to_who_created_it(org, team, mail_server):
    owner = team["owner"]
    factories.api_key(org, owner, name="Quiet")
    assert deliver(mail_server) == []  # nobody by default

    _rule(org, "key.created", "admins", ["oncall@example.com"])
    db.session.execute(sa.delete(NotificationEvent))
    issued = factories.api_key(org, owner, name="Loud")
    event = _only_event(org, "key.created")
    assert event.payload["data"] == {
        "actor": _label(owner),
        "key": {
            "id": str(issued.api_key.id),
            "name": "Loud",
            "hint": issued.api_key.hint,
            "environment": "test",
            "expires_at": None,
        },
    }
    sent = deliver(mail_server)
    assert _to(sent) == sorted([team["other_owner"].email, team["admin"].email, "oncall@example.com"])
    mail = only_mail_to(sent, team["admin"].email)
    assert mail.message["Subject"] == f"[{org.name}] Key created"
    text = mail.part("plain")
    assert f"The test key “Loud” ({issued.api_key.hint}) was created by {_label(owner)}." in text
    assert f"/orgs/{org.slug}/" in text
    assert issued.plaintext not in text and issued.plaintext not in mail.part("html")


def test_key_rolled_names_the_new_key_and_when_the_old_one_stops(org, team, mail_server):
    owner = team["owner"]
    old = factories.api_key(org, owner, name="Deploy").api_key
    _rule(org, "key.rolled", "admins")
    new = key_services.roll_key(org, old, timedelta(hours=24), owner).api_key
    data = _only_event(org, "key.rolled").payload["data"]
    assert data["key"]["id"] == str(old.id) and data["actor"] == _label(owner)
    assert data["new_key"]["id"] == str(new.id) and data["new_key"]["hint"] == new.hint
    assert data["old_key_stops_at"] == old.revoked_at.isoformat()
    sent = deliver(mail_server)
    assert _to(sent) == sorted([team["other_owner"].email, team["admin"].email])
    text = sent[0].part("plain")
    assert f"was rolled by {_label(owner)}" in text and f"replaced by {new.hint}" in text


def test_key_revoked_by_a_member_is_mailed_to_the_other_owners(org, team, mail_server):
    owner = team["owner"]
    api_key = factories.api_key(org, owner, name="Old").api_key
    key_services.revoke_key(org, api_key, owner)
    event = _only_event(org, "key.revoked")
    assert event.payload["data"]["reason"] == "revoked" and event.payload["data"]["actor"] == _label(owner)
    sent = deliver(mail_server)
    assert _to(sent) == [team["other_owner"].email]  # owners by default, not the one who revoked it
    assert sent[0].message["Subject"] == f"[{org.name}] Key revoked"
    assert f"was revoked by {_label(owner)}; calls with it now fail." in sent[0].part("plain")


def test_key_revoked_after_a_leak_report_gives_the_reason_and_does_not_tell_owners_twice(
    client, org, team, mail_server
):
    owner = team["owner"]
    issued = factories.api_key(org, owner, name="Leaky")
    _rule(org, "key.revoked", "admins")

    response = client.post(
        "/v1/keys/revoke", json={"key": issued.plaintext}, environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )

    assert response.status_code == 202
    data = _only_event(org, "key.revoked").payload["data"]
    assert data["reason"] == "reported_leaked" and data["source"] == leaks.SOURCE_REVOCATION_API
    assert data["actor"] == "Leak report (anonymous)" and data["key"]["hint"] == issued.api_key.hint
    sent = deliver(mail_server)
    owners = sorted([owner.email, team["other_owner"].email])
    # The owners get the leak report's own mail only; the admin gets the notification.
    assert _to(sent) == sorted([*owners, team["admin"].email])
    notice = only_mail_to(sent, team["admin"].email)
    assert notice.message["Subject"] == f"[{org.name}] Key revoked"
    assert all(r.message["Subject"] != notice.message["Subject"] for r in sent if r.rcpt_tos[0] in owners)
    assert "was revoked by Leak report (anonymous) after it was reported leaked" in notice.part("plain")


def test_key_leak_reported_when_the_organization_chose_to_be_told(org, team, mail_server):
    owner = team["owner"]
    api_key = factories.api_key(org, owner, name="Found").api_key
    _rule(org, "key.leak_reported", "admins")
    assert org.leak_action == "notify"
    assert (
        leaks.handle_leak(
            api_key,
            revoke=False,
            source=leaks.SOURCE_SECRET_SCANNING,
            url="https://github.com/acme/app/blob/main/.env",
            ip=None,
            now=utcnow(),
        )
        == "notified"
    )
    db.session.commit()
    data = _only_event(org, "key.leak_reported").payload["data"]
    assert data["key"]["id"] == str(api_key.id) and data["source"] == leaks.SOURCE_SECRET_SCANNING
    assert data["actor"] == "GitHub secret scanning"
    assert api_key.revoked_at is None
    sent = deliver(mail_server)
    notice = only_mail_to(sent, team["admin"].email)
    assert notice.message["Subject"] == f"[{org.name}] Key reported leaked"
    assert "was reported found in public. It still works: roll or revoke it." in notice.part("plain")
    # The owners get the leak report's own mail, not the notification as well.
    owners = sorted([owner.email, team["other_owner"].email])
    assert _to(sent) == sorted([*owners, team["admin"].email])
    assert all(r.message["Subject"] != notice.message["Subject"] for r in sent if r.rcpt_tos[0] in owners)


def test_member_joined_by_accepting_an_invitation(org, team, mail_server):
    owner = team["owner"]
    _rule(org, "member.joined", "owners")
    issued = invitations.create_invitation(
        org, role="developer", email=None, ttl=timedelta(days=1), actor=owner, actor_membership=_membership(org, owner)
    )
    newcomer = factories.user(name="Grace Hopper")
    invitations.accept_invitation(issued.token, newcomer)
    data = _only_event(org, "member.joined").payload["data"]
    assert data == {
        "actor": _label(newcomer),
        "member": {"user_id": str(newcomer.id), "email": newcomer.email, "name": "Grace Hopper", "role": "developer"},
    }
    sent = deliver(mail_server)
    assert _to(sent) == sorted([owner.email, team["other_owner"].email])
    assert sent[0].message["Subject"] == f"[{org.name}] Member joined"
    assert f"Grace Hopper <{newcomer.email}> joined as developer." in sent[0].part("plain")


def test_member_removed_by_an_admin(org, team, mail_server):
    admin, developer = team["admin"], team["developer"]
    org_services.remove_member(org, _membership(org, developer), actor=admin, actor_membership=_membership(org, admin))
    data = _only_event(org, "member.removed").payload["data"]
    assert data == {
        "actor": _label(admin),
        "member": {
            "user_id": str(developer.id),
            "email": developer.email,
            "name": developer.display_name,
            "role": "developer",
        },
    }
    sent = deliver(mail_server)
    assert _to(sent) == sorted([team["owner"].email, team["other_owner"].email])  # owners by default
    assert sent[0].message["Subject"] == f"[{org.name}] Member removed"
    assert f"{developer.display_name} <{developer.email}> was removed by {_label(admin)}." in sent[0].part("plain")


def test_member_removed_because_they_left(org, team, mail_server):
    developer = team["developer"]
    mine = _membership(org, developer)
    org_services.remove_member(org, mine, actor=developer, actor_membership=mine)
    data = _only_event(org, "member.removed").payload["data"]
    assert data["reason"] == "left" and data["member"]["email"] == developer.email
    sent = deliver(mail_server)
    assert _to(sent) == sorted([team["owner"].email, team["other_owner"].email])  # not the one who left
    assert f"{developer.display_name} <{developer.email}> left." in sent[0].part("plain")
