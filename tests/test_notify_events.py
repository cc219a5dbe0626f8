"""Organization events: written with the change they describe, queued for the subscribed webhooks, mailed to
the people the organization chose."""

from __future__ import annotations

import sqlalchemy as sa

from portal.extensions import db
from portal.keys import services as key_services
from portal.models import NotificationEvent, NotificationRule, OutboxMail, WebhookDelivery, WebhookEndpoint
from portal.notify import endpoints, events
from tests import factories


def _endpoint(org, event_names, **kwargs):
    endpoint = WebhookEndpoint(
        organization_id=org.id,
        url="https://hooks.example.com/procode",
        events=event_names,
        secret_sealed=endpoints.seal_secret(endpoints.new_secret()),
        **kwargs,
    )
    db.session.add(endpoint)
    db.session.commit()
    return endpoint


def _events(org, kind):
    return list(db.session.scalars(sa.select(NotificationEvent).filter_by(organization_id=org.id, type=kind)))


def _mailed(subject_part):
    return sorted(m.to_address for m in db.session.scalars(sa.select(OutboxMail)) if subject_part in m.subject)


def test_a_created_key_is_an_event_with_its_hint_never_its_secret(org, owner):
    issued = factories.api_key(org, owner, name="Billing")
    (event,) = _events(org, "key.created")
    payload = event.payload
    assert payload["type"] == "key.created" and payload["version"] == 1
    assert payload["id"] == f"evt_{event.id.hex}"
    assert payload["organization"] == {"id": str(org.id), "slug": org.slug, "name": org.name}
    assert payload["data"]["key"]["hint"] == issued.api_key.hint
    assert payload["data"]["key"]["name"] == "Billing"
    assert issued.plaintext not in str(payload)


def test_deliveries_are_queued_for_subscribed_endpoints_only(org, owner):
    everything = _endpoint(org, ["*"])
    revocations = _endpoint(org, ["key.revoked"])
    _endpoint(org, ["key.revoked"], disabled_at=sa.func.now())
    issued = factories.api_key(org, owner)
    key_services.revoke_key(org, issued.api_key, owner)
    deliveries = db.session.scalars(sa.select(WebhookDelivery).join(NotificationEvent)).all()
    got = sorted((d.event.type, d.endpoint_id == everything.id) for d in deliveries)
    assert got == [("key.created", True), ("key.revoked", False), ("key.revoked", True)]
    assert {d.endpoint_id for d in deliveries if d.event.type == "key.revoked"} == {everything.id, revocations.id}
    assert all(d.status == "pending" for d in deliveries)


def test_a_revocation_is_mailed_to_the_other_owners_not_to_who_did_it(org, owner):
    other_owner = factories.member(org, "owner")
    factories.member(org, "admin")
    issued = factories.api_key(org, owner)
    key_services.revoke_key(org, issued.api_key, owner)
    assert _mailed("Key revoked") == [other_owner.email]


def test_the_rule_chooses_the_audience_and_extra_addresses(org, owner):
    admin = factories.member(org, "admin")
    factories.member(org, "developer")
    db.session.add(
        NotificationRule(
            organization_id=org.id, event_type="key.created", audience="admins", addresses=["oncall@example.com"]
        )
    )
    db.session.commit()
    factories.api_key(org, None, actor_label="CLI")
    assert _mailed("Key created") == sorted([owner.email, admin.email, "oncall@example.com"])


def test_an_event_with_a_dedupe_key_is_recorded_once(org):
    first = events.emit(org, "quota.threshold", {"percent": 80}, dedupe_key="quota:2026-12:80")
    second = events.emit(org, "quota.threshold", {"percent": 80}, dedupe_key="quota:2026-12:80")
    db.session.commit()
    assert first is not None and second is None
    assert len(_events(org, "quota.threshold")) == 1


def test_an_action_rolled_back_announces_nothing(org, owner):
    _endpoint(org, ["*"])
    db.session.rollback()
    issued = factories.api_key(org, owner)
    api_key = issued.api_key
    api_key.name = "changed"
    key_services._revoke(org, api_key, owner, api_key.created_at)
    db.session.rollback()
    assert [e.type for e in db.session.scalars(sa.select(NotificationEvent))] == ["key.created"]
