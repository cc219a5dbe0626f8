"""Webhook endpoint pages: owners and admins add endpoints (secret shown once), edit, pause, resume, enable,
rotate, delete, send a test event, read the delivery log and resend; others are refused; every change audited
with the URL and never the secret."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditEvent, NotificationEvent, OutboxMail, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from portal.notify import endpoints, events, webhook_log, webhooks
from portal.notify.catalogue import TEST_EVENT
from portal.timeutil import utcnow
from tests import factories

URL = "https://hooks.example.com/procode"


def _base(org):
    return f"/orgs/{org.slug}/webhooks"


def _add(client, org, url=URL, events_=("*",), form_token="t1", **extra):  # noqa: S107 -- a form token
    data = {
        "url": url,
        "description": extra.pop("description", ""),
        "events": list(events_),
        "request_token": form_token,
    }
    data.update(extra)
    return client.post(f"{_base(org)}/new", data=data)


def _secret(response):
    return response.get_data(as_text=True).split('id="signing-secret" class="secret-value">')[1].split("<")[0]


def _endpoint(org, url=URL, names=("*",), actor=None):
    return webhooks.create_endpoint(org, url=url, events=list(names), actor=actor, actor_label="test").endpoint


def _endpoints(org):
    return list(db.session.scalars(sa.select(WebhookEndpoint).filter_by(organization_id=org.id)))


def _audits(org, prefix="webhook."):
    return list(
        db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.organization_id == org.id, AuditEvent.action.startswith(prefix))
        )
    )


def _audit(org, action):
    """The one audit event of ``action`` (events of one test share a transaction, so share a timestamp)."""
    (found,) = _audits(org, action)
    return found


def _audit_text():
    return db.session.execute(sa.text("SELECT coalesce(string_agg(details::text, ' '), '') FROM audit_events")).scalar()


def _delivery(endpoint, event, status="failed", attempts=()):
    """A delivery as the deliverer leaves it: ``attempts`` are (HTTP status, error, response) triples."""
    delivery = WebhookDelivery(endpoint_id=endpoint.id, event_id=event.id, status=status, attempts=len(attempts))
    db.session.add(delivery)
    db.session.flush()
    for n, (code, error, body) in enumerate(attempts):
        db.session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                attempted_at=utcnow() - timedelta(minutes=10 - n),
                status_code=code,
                duration_ms=120 + n,
                error=error,
                response_excerpt=body,
            )
        )
    if attempts:
        delivery.last_attempt_at = utcnow()
    db.session.commit()
    return delivery


def _event(org, kind="key.created"):
    """An event of ``org`` with no delivery queued (the tests queue their own, in the state they need)."""
    at = utcnow()
    event_id = uuid.uuid4()
    data = {"key": {"name": "Billing", "hint": "pk_test_…abcd", "environment": "test"}}
    payload = events.payload_for(event_id, org, kind, data, at)
    event = NotificationEvent(id=event_id, organization_id=org.id, type=kind, payload=payload, occurred_at=at)
    db.session.add(event)
    db.session.commit()
    return event


def _emit(org, kind="key.created"):
    """An event as the portal emits it: queued for every subscribed endpoint."""
    event = events.emit(org, kind, {"key": {"name": "Billing", "hint": "pk_test_…abcd", "environment": "test"}})
    db.session.commit()
    return event


# Who may do what ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_reach_every_webhook_page(client, auth, org, role):
    auth.login(factories.member(org, role))
    endpoint = _endpoint(org)
    for path in (
        _base(org),
        f"{_base(org)}/new",
        f"{_base(org)}/{endpoint.id}",
        f"{_base(org)}/{endpoint.id}?show=failed",
        f"{_base(org)}/{endpoint.id}/delete",
    ):
        assert client.get(path).status_code == 200, path
    nav = client.get(f"/orgs/{org.slug}/keys/").get_data(as_text=True)
    assert f'href="{_base(org)}"' in nav and f'href="/orgs/{org.slug}/settings/notifications"' in nav


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_developers_and_viewers_are_refused_everywhere(client, auth, org, owner, role):
    endpoint = _endpoint(org)
    delivery = _delivery(endpoint, _event(org))
    auth.login(factories.member(org, role))
    for path in (_base(org), f"{_base(org)}/new", f"{_base(org)}/{endpoint.id}", f"{_base(org)}/{endpoint.id}/delete"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert URL not in response.get_data(as_text=True)
    for action in ("edit", "pause", "resume", "enable", "test", "rotate", "delete", f"deliveries/{delivery.id}/resend"):
        assert (
            client.post(f"{_base(org)}/{endpoint.id}/{action}", data={"url": URL, "events": ["*"]}).status_code == 403
        )
    assert _add(client, org, url="https://other.example.com/").status_code == 403
    assert [(e.url, e.status) for e in _endpoints(org)] == [(URL, "active")]
    assert [a.action for a in _audits(org)] == ["webhook.created"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 1


def test_another_organizations_endpoint_is_absent(client, auth, org, owner):
    other = factories.org()
    theirs = _endpoint(other)
    delivery = _delivery(theirs, _event(other))
    mine = _endpoint(org, url="https://mine.example.com/")
    auth.login(owner)
    assert client.get(f"{_base(org)}/{theirs.id}").status_code == 404
    assert client.get(f"{_base(org)}/not-a-uuid").status_code == 404
    for action in ("pause", "test", "rotate", "delete"):
        assert client.post(f"{_base(org)}/{theirs.id}/{action}").status_code == 404
    # A delivery of another endpoint, reached through one's own endpoint, is absent too.
    assert client.post(f"{_base(org)}/{mine.id}/deliveries/{delivery.id}/resend").status_code == 404
    assert theirs.paused_at is None and db.session.get(WebhookEndpoint, theirs.id) is not None
    assert client.get(f"/orgs/{other.slug}/webhooks").status_code == 404


# Adding an endpoint; the secret shown once -----------------------------------------------------------------------


def test_adding_shows_the_secret_once_and_keeps_it_sealed(client, auth, org, owner):
    auth.login(owner)
    form = client.get(f"{_base(org)}/new").get_data(as_text=True)
    assert re.search(r'<input checked[^>]*value="\*"', form)  # all events, unless narrowed
    response = _add(client, org, events_=("key.revoked", "key.created"), description="Pager bridge")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    secret = _secret(response)
    assert secret.startswith("whsec_") and len(endpoints.secret_bytes(secret)) == 32
    (endpoint,) = _endpoints(org)
    assert endpoint.url == URL and endpoint.events == ["key.created", "key.revoked"]  # catalogue order
    assert endpoint.description == "Pager bridge" and endpoint.created_by_id == owner.id
    assert endpoints.signing_keys(endpoint).current == endpoints.secret_bytes(secret)
    stored = db.session.execute(sa.text("SELECT row_to_json(webhook_endpoints)::text FROM webhook_endpoints")).scalar()
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    # Never again: not on the list, the endpoint page, the audit log page, nor in the audit rows.
    for path in (_base(org), f"{_base(org)}/{endpoint.id}", f"/orgs/{org.slug}/audit"):
        page = client.get(path).get_data(as_text=True)
        assert secret not in page and secret.removeprefix("whsec_") not in page, path
    (audit,) = _audits(org)
    assert audit.action == "webhook.created" and audit.details["url"] == URL
    assert audit.details["events"] == "key.created, key.revoked"
    assert secret not in _audit_text() and secret.removeprefix("whsec_") not in _audit_text()


def test_a_reload_of_the_secret_page_does_not_show_it_again_nor_add_another(client, auth, org, owner):
    auth.login(owner)
    first = _add(client, org, form_token="same")
    secret = _secret(first)
    again = _add(client, org, form_token="same")
    assert again.status_code == 302
    (endpoint,) = _endpoints(org)
    assert again.headers["Location"].endswith(f"{_base(org)}/{endpoint.id}")
    page = client.get(again.headers["Location"]).get_data(as_text=True)
    assert "already added" in page and secret not in page
    assert len(_audits(org)) == 1


def test_an_endpoint_page_is_not_a_way_back_to_the_secret(client, auth, org, owner):
    auth.login(owner)
    secret = _secret(_add(client, org))
    (endpoint,) = _endpoints(org)
    assert "/secret" not in client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True)
    assert secret not in client.get(f"{_base(org)}/new").get_data(as_text=True)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://user:pass@hooks.example.com/", "Leave credentials out of the URL"),
        ("http://hooks.example.com/", "Enter an https URL"),
        ("https://10.0.0.7/hooks", "Enter a public address"),
        ("https://127.0.0.1:8443/", "Enter a public address"),
        ("https://[::1]/", "Enter a public address"),
        ("https://169.254.169.254/latest/meta-data", "Enter a public address"),
        ("https://localhost/hooks", "Enter a public address"),
        ("https://hooks.example.com/" + "a" * 2000, "Enter a URL of at most 2000 characters"),
        ("https://hooks.example.com/x#part", "Leave the #fragment out"),
        ("not a url", "without spaces"),
        ("", "Enter the URL that receives the events."),
    ],
)
def test_a_url_that_must_not_receive_webhooks_is_a_form_error(client, auth, org, owner, public_only, url, error):
    auth.login(owner)
    response = _add(client, org, url=url)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert error in body and 'aria-invalid="true"' in body
    assert _endpoints(org) == [] and _audits(org) == []


def test_plain_http_to_loopback_is_allowed_only_with_the_override(client, auth, org, owner):
    auth.login(owner)  # the test config sets WEBHOOK_ALLOW_PRIVATE, like development
    assert _add(client, org, url="http://127.0.0.1:9000/hooks").status_code == 200
    assert [e.url for e in _endpoints(org)] == ["http://127.0.0.1:9000/hooks"]


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (["key.nope"], "Unknown event &#39;key.nope&#39;"),
        ([], "Tick the events to send, or “All events”."),
    ],
)
def test_events_must_come_from_the_catalogue(client, auth, org, owner, names, error):
    auth.login(owner)
    response = _add(client, org, events_=names)
    assert response.status_code == 422
    assert error in response.get_data(as_text=True)
    assert _endpoints(org) == []


def test_a_description_with_control_characters_or_too_long_is_refused(client, auth, org, owner):
    auth.login(owner)
    assert _add(client, org, description="x" * 201).status_code == 422
    assert _add(client, org, description="bad\x07bell").status_code == 422
    assert _endpoints(org) == []


def test_an_organization_has_at_most_ten_endpoints(client, auth, org, owner):
    for n in range(webhooks.MAX_ENDPOINTS):
        _endpoint(org, url=f"https://hooks{n}.example.com/")
    auth.login(owner)
    response = _add(client, org, url="https://one-more.example.com/")
    assert response.status_code == 422
    assert "the most it can have" in response.get_data(as_text=True)
    assert len(_endpoints(org)) == webhooks.MAX_ENDPOINTS
    listing = client.get(_base(org)).get_data(as_text=True)
    assert "Add endpoint" not in listing and "delete one to add another" in listing


# The list and the endpoint page ----------------------------------------------------------------------------------


def test_the_list_shows_url_events_status_and_last_result(client, auth, org, owner):
    healthy = _endpoint(org, url="https://ok.example.com/", names=["key.revoked"])
    failing = _endpoint(org, url="https://down.example.com/")
    paused = _endpoint(org, url="https://paused.example.com/")
    disabled = _endpoint(org, url="https://gone.example.com/")
    quiet = _endpoint(org, url="https://quiet.example.com/")
    event = _event(org)
    _delivery(healthy, event, "delivered", [(200, None, "ok")])
    _delivery(failing, event, "pending", [(503, None, "busy"), (None, "timed out after 10 s", None)])
    paused.paused_at = utcnow()
    disabled.disabled_at, disabled.disabled_reason = utcnow(), "30 failures in a row"
    db.session.commit()
    auth.login(owner)
    body = client.get(_base(org)).get_data(as_text=True)
    rows = {e.url: body.split(e.url, 1)[1].split("</tr>", 1)[0] for e in (healthy, failing, paused, disabled, quiet)}
    assert "key.revoked" in rows[healthy.url] and "Delivered · HTTP 200" in rows[healthy.url]
    assert "all events" in rows[failing.url] and "Retrying · timed out after 10 s" in rows[failing.url]
    assert ">paused<" in rows[paused.url] and ">disabled<" in rows[disabled.url] and ">active<" in rows[quiet.url]
    assert "No deliveries tried yet" in rows[quiet.url]


def test_the_delivery_log_shows_each_attempt_newest_delivery_first(client, auth, org, owner):
    endpoint = _endpoint(org)
    first = _delivery(endpoint, _event(org, "key.created"), "delivered", [(200, None, '{"ok": true}')])
    second = _delivery(
        endpoint, _event(org, "key.revoked"), "failed", [(500, None, "Internal <b>error</b>"), (None, "refused", None)]
    )
    db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == first.id)
        .values(created_at=utcnow() - timedelta(hours=1))
    )
    db.session.commit()
    auth.login(owner)
    body = client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True)
    log = body.split("Delivery log", 1)[1]
    assert log.index("key.revoked") < log.index("key.created")
    assert f"evt_{second.event_id.hex}" in log and f"evt_{first.event_id.hex}" in log
    assert "HTTP 500" in log and "Internal &lt;b&gt;error&lt;/b&gt;" in log and "refused" in log
    assert "120 ms" in log and "121 ms" in log and "HTTP 200" in log
    assert log.count(">Resend<") == 2

    failed = client.get(f"{_base(org)}/{endpoint.id}?show=failed").get_data(as_text=True).split("Delivery log", 1)[1]
    assert "key.revoked" in failed and "key.created" not in failed


def test_the_delivery_log_pages(client, auth, org, owner):
    endpoint = _endpoint(org)
    event = _event(org)
    for _ in range(webhook_log.DELIVERIES_PER_PAGE + 1):
        _delivery(endpoint, event, "delivered", [(200, None, None)])
    auth.login(owner)
    first = client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True)
    assert "Page 1 of 2" in first and first.count(">Resend<") == webhook_log.DELIVERIES_PER_PAGE
    second = client.get(f"{_base(org)}/{endpoint.id}?page=2").get_data(as_text=True)
    assert "Page 2 of 2" in second and second.count(">Resend<") == 1


# Changes ---------------------------------------------------------------------------------------------------------


def test_editing_changes_url_events_and_description_and_audits_the_previous_url(client, auth, org, owner):
    endpoint = _endpoint(org)
    auth.login(owner)
    response = client.post(
        f"{_base(org)}/{endpoint.id}/edit",
        data={"url": "https://new.example.com/hook", "events": ["quota.threshold"], "description": "Billing"},
    )
    assert response.status_code == 302
    db.session.refresh(endpoint)
    assert (endpoint.url, endpoint.events, endpoint.description) == (
        "https://new.example.com/hook",
        ["quota.threshold"],
        "Billing",
    )
    audit = _audit(org, "webhook.updated")
    assert audit.action == "webhook.updated"
    assert audit.details["url"] == "https://new.example.com/hook" and audit.details["previous_url"] == URL
    assert audit.details["events"] == "all events → quota.threshold"
    assert audit.details["changed"] == "URL, events, description"


def test_editing_with_a_bad_url_changes_nothing(client, auth, org, owner, public_only):
    endpoint = _endpoint(org)
    auth.login(owner)
    response = client.post(f"{_base(org)}/{endpoint.id}/edit", data={"url": "https://192.168.1.2/", "events": ["*"]})
    assert response.status_code == 422
    assert "Enter a public address" in response.get_data(as_text=True)
    db.session.refresh(endpoint)
    assert endpoint.url == URL and len(_audits(org)) == 1


def test_pause_and_resume(client, auth, org, owner):
    endpoint = _endpoint(org)
    auth.login(owner)
    assert client.post(f"{_base(org)}/{endpoint.id}/pause").status_code == 302
    db.session.refresh(endpoint)
    assert endpoint.status == "paused"
    page = client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True)
    assert ">Resume<" in page and ">Pause<" not in page
    again = client.post(f"{_base(org)}/{endpoint.id}/pause", follow_redirects=True)
    assert "already paused" in again.get_data(as_text=True)
    # Events keep being queued while paused; they go out on resume.
    _emit(org)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 1
    assert client.post(f"{_base(org)}/{endpoint.id}/resume").status_code == 302
    db.session.refresh(endpoint)
    assert endpoint.status == "active"
    assert sorted(a.action for a in _audits(org)) == ["webhook.created", "webhook.paused", "webhook.resumed"]
    assert all(a.details["url"] == URL for a in _audits(org))


def test_a_disabled_endpoint_shows_why_and_is_enabled_again(client, auth, org, owner):
    endpoint = _endpoint(org)
    endpoint.disabled_at = utcnow()
    endpoint.disabled_reason = "Failed 30 times in a row since 2026-12-01 10:00 UTC (HTTP 502)."
    endpoint.consecutive_failures = 30
    db.session.commit()
    auth.login(owner)
    page = client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True)
    assert "Failed 30 times in a row" in page and ">Enable again<" in page
    assert ">Send a test event<" not in page
    assert client.post(f"{_base(org)}/{endpoint.id}/test").status_code == 302
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0  # refused while disabled
    assert client.post(f"{_base(org)}/{endpoint.id}/enable").status_code == 302
    db.session.refresh(endpoint)
    assert (endpoint.status, endpoint.disabled_reason, endpoint.consecutive_failures) == ("active", None, 0)
    audit = _audit(org, "webhook.enabled")
    assert audit.action == "webhook.enabled" and "Failed 30 times" in audit.details["reason"]
    _emit(org)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 1  # events reach it again


@pytest.mark.parametrize(("overlap", "period"), [("1h", timedelta(hours=1)), ("7d", timedelta(days=7))])
def test_rotation_keeps_the_previous_secret_sealed_until_the_overlap_ends(client, auth, org, owner, overlap, period):
    auth.login(owner)
    old_secret = _secret(_add(client, org))
    (endpoint,) = _endpoints(org)
    old_sealed = endpoint.secret_sealed
    before = utcnow()
    response = client.post(f"{_base(org)}/{endpoint.id}/rotate", data={"overlap": overlap, "request_token": "r1"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    new_secret = _secret(response)
    assert new_secret != old_secret and "previous secret also signs" in response.get_data(as_text=True)
    db.session.refresh(endpoint)
    assert endpoint.previous_secret_sealed == old_sealed
    assert before + period <= endpoint.previous_secret_until <= utcnow() + period
    during = endpoints.signing_keys(endpoint)
    assert during.current == endpoints.secret_bytes(new_secret)
    assert during.previous == endpoints.secret_bytes(old_secret)
    after = endpoints.signing_keys(endpoint, now=endpoint.previous_secret_until + timedelta(seconds=1))
    assert after.previous is None
    stored = db.session.execute(sa.text("SELECT row_to_json(webhook_endpoints)::text FROM webhook_endpoints")).scalar()
    assert new_secret.removeprefix("whsec_") not in stored and old_secret.removeprefix("whsec_") not in stored
    page = client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True)
    assert new_secret not in page and "previous secret also signs until" in page
    audit = _audit(org, "webhook.secret_rotated")
    assert audit.action == "webhook.secret_rotated" and audit.details["url"] == URL
    for secret in (old_secret, new_secret):
        assert secret.removeprefix("whsec_") not in _audit_text()

    # A reload of the secret page resubmits the form: nothing rotates again, nothing is shown again.
    again = client.post(f"{_base(org)}/{endpoint.id}/rotate", data={"overlap": overlap, "request_token": "r1"})
    assert again.status_code == 302
    db.session.refresh(endpoint)
    assert endpoints.signing_keys(endpoint).current == endpoints.secret_bytes(new_secret)
    assert [a.action for a in _audits(org)].count("webhook.secret_rotated") == 1


def test_rotation_without_overlap_stops_the_old_secret_at_once(client, auth, org, owner):
    endpoint = _endpoint(org)
    auth.login(owner)
    response = client.post(f"{_base(org)}/{endpoint.id}/rotate", data={"overlap": "none", "request_token": "r"})
    assert response.status_code == 200 and "no longer signs" in response.get_data(as_text=True)
    db.session.refresh(endpoint)
    assert endpoint.previous_secret_sealed is None and endpoint.previous_secret_until is None
    assert endpoints.signing_keys(endpoint).previous is None
    bad = client.post(f"{_base(org)}/{endpoint.id}/rotate", data={"overlap": "forever", "request_token": "r2"})
    assert bad.status_code == 422 and "Not a valid choice." in bad.get_data(as_text=True)


def test_delete_asks_first_then_removes_the_endpoint_and_its_log(client, auth, org, owner):
    endpoint = _endpoint(org)
    endpoint_id = endpoint.id
    _delivery(endpoint, _event(org), "pending")
    _delivery(endpoint, _event(org), "delivered", [(200, None, None)])
    auth.login(owner)
    confirm = client.get(f"{_base(org)}/{endpoint.id}/delete")
    assert confirm.status_code == 200
    body = confirm.get_data(as_text=True)
    assert URL in body and "1 delivery not yet sent is dropped" in body
    assert db.session.get(WebhookEndpoint, endpoint.id) is not None  # a GET changes nothing
    response = client.post(f"{_base(org)}/{endpoint_id}/delete")
    assert response.status_code == 302 and response.headers["Location"].endswith(_base(org))
    assert _endpoints(org) == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0
    audit = _audit(org, "webhook.deleted")
    assert audit.action == "webhook.deleted" and audit.details["url"] == URL and audit.details["dropped"] == 1
    assert client.get(f"{_base(org)}/{endpoint_id}").status_code == 404


def test_a_test_event_goes_to_this_endpoint_only(client, auth, org, owner):
    endpoint = _endpoint(org, names=["key.revoked"])
    everything = _endpoint(org, url="https://all.example.com/")
    auth.login(owner)
    response = client.post(f"{_base(org)}/{endpoint.id}/test", follow_redirects=True)
    assert "Test event queued" in response.get_data(as_text=True)
    (delivery,) = db.session.scalars(sa.select(WebhookDelivery))
    assert delivery.endpoint_id == endpoint.id and delivery.status == "pending"
    assert delivery.event.type == TEST_EVENT and delivery.event.payload["data"]["endpoint_id"] == str(endpoint.id)
    assert everything.id != delivery.endpoint_id
    assert db.session.scalars(sa.select(OutboxMail)).all() == []  # never mailed
    assert TEST_EVENT not in client.get(f"/orgs/{org.slug}/events").get_data(as_text=True)  # not the org's news
    log = client.get(f"{_base(org)}/{endpoint.id}").get_data(as_text=True).split("Delivery log", 1)[1]
    assert "Test event" in log and delivery.event.payload["id"] in log
    audit = _audit(org, "webhook.test_sent")
    assert audit.action == "webhook.test_sent" and audit.details["event_id"] == delivery.event.payload["id"]


def test_a_paused_endpoint_gets_its_test_event_on_resume(client, auth, org, owner):
    endpoint = _endpoint(org)
    auth.login(owner)
    client.post(f"{_base(org)}/{endpoint.id}/pause")
    response = client.post(f"{_base(org)}/{endpoint.id}/test", follow_redirects=True)
    assert "sent when you resume" in response.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 1


def test_resend_queues_the_same_event_again_as_a_new_delivery(client, auth, org, owner):
    endpoint = _endpoint(org)
    failed = _delivery(endpoint, _event(org), "failed", [(500, None, "no")])
    auth.login(owner)
    response = client.post(f"{_base(org)}/{endpoint.id}/deliveries/{failed.id}/resend?show=failed")
    assert response.status_code == 302 and response.headers["Location"].endswith("?show=failed")
    deliveries = db.session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.created_at)).all()
    assert len(deliveries) == 2
    copy = next(d for d in deliveries if d.id != failed.id)
    assert copy.event_id == failed.event_id and copy.status == "pending" and copy.attempts == 0
    assert copy.next_attempt_at <= utcnow()
    db.session.refresh(failed)
    assert failed.status == "failed" and failed.attempts == 1  # the original stays as it ended
    audit = _audit(org, "webhook.resent")
    assert audit.action == "webhook.resent" and audit.details["event_id"] == f"evt_{failed.event_id.hex}"

    # A delivery still being tried is not doubled.
    refused = client.post(f"{_base(org)}/{endpoint.id}/deliveries/{copy.id}/resend", follow_redirects=True)
    assert "still being sent" in refused.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 2


def test_the_audit_page_names_the_endpoint_by_its_url(client, auth, org, owner):
    auth.login(owner)
    _add(client, org)
    (endpoint,) = _endpoints(org)
    client.post(f"{_base(org)}/{endpoint.id}/pause")
    body = client.get(f"/orgs/{org.slug}/audit").get_data(as_text=True)
    assert "Webhook endpoint added" in body and "Webhook endpoint paused" in body
    assert URL in body and "Found at" not in body


def test_state_changes_need_the_csrf_token(csrf_app, org, owner):
    endpoint = _endpoint(org)
    client = csrf_app.test_client()
    token = client.get("/login").text.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    client.post("/login", data={"email": owner.email, "password": factories.PASSWORD, "csrf_token": token})
    for action in ("pause", "test", "delete"):
        assert client.post(f"{_base(org)}/{endpoint.id}/{action}").status_code == 400
    db.session.refresh(endpoint)
    assert endpoint.status == "active" and db.session.scalars(sa.select(NotificationEvent)).all() == []
