"""Webhook delivery: emitted events reach real receivers on loopback, signed per Standard Webhooks; failures are
retried with growing, jittered delays; a receiver that fails for a whole schedule is disabled and its owners
mailed; a hanging receiver holds up nobody else; private destinations are refused with the reason logged."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import standardwebhooks
from standardwebhooks.webhooks import WebhookVerificationError

from portal.extensions import db
from portal.models import AuditEvent, NotificationEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from portal.notify import endpoints, events
from portal.notify.delivery import PER_LANE, deliver_due
from portal.notify.delivery_results import retry_delay, retry_schedule
from portal.timeutil import utcnow
from tests import factories
from tests.mail_helpers import deliver as deliver_mail
from tests.mail_helpers import only_mail_to
from tests.webhook_receiver import Receiver, receiving


def add_endpoint(org: Any, url: str, *, event_names: list[str] | None = None, **kwargs: Any) -> tuple[Any, str]:
    """An endpoint and its signing secret (as shown once when it is made)."""
    secret = endpoints.new_secret()
    endpoint = WebhookEndpoint(
        organization_id=org.id,
        url=url,
        events=event_names or ["*"],
        secret_sealed=endpoints.seal_secret(secret),
        **kwargs,
    )
    db.session.add(endpoint)
    db.session.commit()
    return endpoint, secret


def emit(org: Any, n: int = 1) -> list[NotificationEvent]:
    """``n`` member.joined events, committed (as the change that causes them would be)."""
    emitted = []
    for i in range(n):
        event = events.emit(org, "member.joined", {"member": {"email": f"new{i}@example.com", "role": "viewer"}})
        assert event is not None
        emitted.append(event)
    db.session.commit()
    return emitted


def deliveries_of(endpoint: Any) -> list[WebhookDelivery]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            sa.select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )


def attempts_of(delivery: Any) -> list[WebhookAttempt]:
    return list(
        db.session.scalars(
            sa.select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id).order_by(WebhookAttempt.id)
        )
    )


@pytest.fixture
def config(app: Any) -> Iterator[dict[str, Any]]:
    """Per-test settings, restored afterwards."""
    saved = dict(app.config)
    yield app.config
    for name in ("WEBHOOK_TIMEOUT", "WEBHOOK_ALLOW_PRIVATE", "WEBHOOK_RETRY_SCHEDULE", "WEBHOOK_CONCURRENCY"):
        app.config[name] = saved[name]


def test_an_emitted_event_reaches_the_receiver_signed_and_is_logged(org, owner):
    with receiving() as receiver:
        endpoint, secret = add_endpoint(org, receiver.url)
        (event,) = emit(org)
        result = deliver_due()
    assert (result.delivered, result.retrying, result.failed) == (1, 0, 0)
    (request,) = receiver.requests
    assert request.path == "/hooks"
    assert request.verify(secret) == event.payload  # standardwebhooks accepts the signature
    assert request.headers["webhook-id"] == event.payload["id"] == f"evt_{event.id.hex}"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
    assert request.headers["User-Agent"] == "ProCode-Webhooks/1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert secret not in str(request.headers)
    (delivery,) = deliveries_of(endpoint)
    assert delivery.status == "delivered" and delivery.attempts == 1 and delivery.delivered_at is not None
    (attempt,) = attempts_of(delivery)
    assert attempt.status_code == 204 and attempt.error is None and attempt.duration_ms >= 0
    assert deliver_due().attempted == 0  # delivered once, not again


def test_a_body_signed_with_another_secret_is_refused_by_the_receiver(org, owner):
    with receiving() as receiver:
        add_endpoint(org, receiver.url)
        emit(org)
        deliver_due()
    with pytest.raises(WebhookVerificationError):
        receiver.requests[0].verify(endpoints.new_secret())


def test_during_a_rotation_overlap_both_secrets_verify_then_only_the_new_one(org, owner):
    old_secret = endpoints.new_secret()
    with receiving() as receiver:
        endpoint, new_secret = add_endpoint(
            org,
            receiver.url,
            previous_secret_sealed=endpoints.seal_secret(old_secret),
            previous_secret_until=utcnow() + timedelta(hours=24),
        )
        emit(org)
        deliver_due()
        emit(org)
        deliver_due(now=utcnow() + timedelta(hours=25))  # the overlap is over
    during, after = receiver.requests
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verify(new_secret) == during.verify(old_secret)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    after.verify(new_secret)
    with pytest.raises(WebhookVerificationError):
        after.verify(old_secret)


def test_a_receiver_that_is_down_gets_the_event_after_a_retry(org, owner):
    receiver = Receiver()  # not listening yet
    endpoint, secret = add_endpoint(org, receiver.url)
    (event,) = emit(org)
    start = utcnow()
    result = deliver_due(now=start)
    assert (result.delivered, result.retrying) == (0, 1)
    (delivery,) = deliveries_of(endpoint)
    assert delivery.status == "pending" and delivery.attempts == 1
    assert start < delivery.next_attempt_at <= start + timedelta(seconds=6)  # the first step: up to 5 s
    (attempt,) = attempts_of(delivery)
    assert attempt.status_code is None and "Connection failed" in attempt.error and "refused" in attempt.error
    assert db.session.get(WebhookEndpoint, endpoint.id).consecutive_failures == 1

    assert deliver_due(now=start).attempted == 0  # not due again before its retry time
    receiver.up()
    try:
        result = deliver_due(now=delivery.next_attempt_at)
    finally:
        receiver.down()
    assert result.delivered == 1
    assert receiver.payloads(secret) == [event.payload]
    (delivery,) = deliveries_of(endpoint)
    assert delivery.status == "delivered" and delivery.attempts == 2
    assert db.session.get(WebhookEndpoint, endpoint.id).consecutive_failures == 0  # a success resets the count


def test_every_retry_carries_the_same_webhook_id_and_the_log_keeps_the_answer(org, owner):
    with receiving("error") as receiver:
        endpoint, secret = add_endpoint(org, receiver.url)
        (event,) = emit(org)
        deliver_due()
        (delivery,) = deliveries_of(endpoint)
        receiver.mode = "ok"
        deliver_due(now=delivery.next_attempt_at)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.payload["id"]
    assert first.verify(secret) == second.verify(secret) == event.payload
    failed, delivered = attempts_of(delivery)
    assert (failed.status_code, failed.error) == (500, "HTTP 500")
    assert failed.response_excerpt == "receiver is broken: try again later"
    assert delivered.status_code == 204


def test_retry_delays_grow_along_the_schedule_with_full_jitter(app):
    schedule = retry_schedule(app.config)
    rng = random.Random(7)
    for attempts, step in enumerate(schedule, start=1):
        delays = [retry_delay(attempts, schedule, rng).total_seconds() for _ in range(400)]
        assert all(0 <= d <= step for d in delays)
        assert len(set(delays)) == len(delays)  # spread out, not one instant
        mean = sum(delays) / len(delays)
        assert 0.4 * step < mean < 0.6 * step
    assert retry_delay(len(schedule) + 1, schedule) is None  # given up
    assert sorted(schedule) == list(schedule) and schedule[0] < schedule[-1]
    # about a day in all, on average
    assert timedelta(hours=20) < timedelta(seconds=sum(schedule) / 2) < timedelta(hours=30)


def test_a_burst_of_failures_is_retried_spread_out(org, owner):
    receiver = Receiver()  # not listening: every attempt fails
    endpoint, _ = add_endpoint(org, receiver.url)
    emit(org, 5)
    start = utcnow()
    deliver_due(now=start)
    # The first fails as unreachable; the lane's others are handed back untouched and retried next pass.
    for _ in range(5):
        deliver_due(now=start)
    retries = [d.next_attempt_at for d in deliveries_of(endpoint)]
    assert all(d.attempts == 1 for d in deliveries_of(endpoint))
    assert len(set(retries)) == 5 and all(start < r <= start + timedelta(seconds=6) for r in retries)


def test_giving_up_marks_the_delivery_failed_disables_the_endpoint_and_mails_the_owners(
    org, owner, mail_server, config
):
    other_owner = factories.member(org, "owner")
    admin = factories.member(org, "admin")
    config["WEBHOOK_RETRY_SCHEDULE"] = (5, 60, 300)
    with receiving("error") as receiver:
        endpoint, _ = add_endpoint(org, receiver.url)
        emit(org)
        start = when = utcnow()
        for _ in range(3):
            deliver_due(now=when)
            (delivery,) = deliveries_of(endpoint)
            assert delivery.status == "pending" and db.session.get(WebhookEndpoint, endpoint.id).disabled_at is None
            when = delivery.next_attempt_at
        result = deliver_due(now=when)
    assert result.failed == 1 and result.disabled == [endpoint.id]
    (delivery,) = deliveries_of(endpoint)
    assert delivery.status == "failed" and delivery.attempts == 4 and len(receiver.requests) == 4
    endpoint = db.session.get(WebhookEndpoint, endpoint.id)
    assert endpoint.status == "disabled" and endpoint.disabled_at is not None
    assert "HTTP 500" in endpoint.disabled_reason and start.strftime("%Y-%m-%d %H:%M") in endpoint.disabled_reason
    (record,) = db.session.scalars(sa.select(AuditEvent).filter_by(organization_id=org.id, action="webhook.disabled"))
    assert record.actor_label == "ProCode Portal" and record.target_id == str(endpoint.id)
    assert record.details["url"] == receiver.url

    received = deliver_mail(mail_server)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted([owner.email, other_owner.email])
    assert admin.email not in {r.rcpt_tos[0] for r in received}
    message = only_mail_to(received, owner.email)
    assert "webhook endpoint was disabled" in message.message["Subject"]
    assert org.name in message.message["Subject"]
    text = message.part("plain")
    assert receiver.url in text and "HTTP 500" in text and f"/orgs/{org.slug}/events" in text
    assert receiver.url in message.part("html")

    emit(org)  # a disabled endpoint gets no new deliveries
    assert len(deliveries_of(endpoint)) == 1


def test_an_endpoint_that_still_accepts_other_events_is_not_disabled(org, owner, config):
    """One event its receiver always refuses is given up; the endpoint took another meanwhile, so it stays on."""
    config["WEBHOOK_RETRY_SCHEDULE"] = (5, 60)
    with receiving() as receiver:
        endpoint, _ = add_endpoint(org, receiver.url)
        refused, accepted = emit(org, 2)
        receiver.refuse.add(refused.payload["id"])
        when = utcnow()
        while (result := deliver_due(now=when)).failed == 0:
            assert result.attempted
            (pending,) = [d for d in deliveries_of(endpoint) if d.status == "pending"]
            when = pending.next_attempt_at
    assert result.disabled == []
    status = {d.event_id: d.status for d in deliveries_of(endpoint)}
    assert status == {refused.id: "failed", accepted.id: "delivered"}
    assert db.session.get(WebhookEndpoint, endpoint.id).disabled_at is None


def test_a_hanging_receiver_does_not_hold_up_other_endpoints(app, org, owner, config):
    config["WEBHOOK_TIMEOUT"] = 30.0  # the hang lasts until the test releases it
    with receiving("hang") as hanging, receiving() as fine, receiving() as also_fine:
        stuck, _ = add_endpoint(org, hanging.url)
        first, first_secret = add_endpoint(org, fine.url)
        second, _ = add_endpoint(org, also_fine.url)
        emitted = emit(org, 3)
        results: list[Any] = []

        def one_pass() -> None:
            with app.app_context():
                results.append(deliver_due())

        passing = threading.Thread(target=one_pass)
        passing.start()
        try:
            assert hanging.hanging.wait(10)
            deadline = time.monotonic() + 20
            while (len(fine.requests), len(also_fine.requests)) != (3, 3) and time.monotonic() < deadline:
                time.sleep(0.02)
            # Both other receivers have all three events while the first one is still held.
            assert (len(fine.requests), len(also_fine.requests)) == (3, 3)
            assert hanging.requests == [] and passing.is_alive()
        finally:
            hanging.release()
            passing.join(60)
    assert fine.payloads(first_secret) == [e.payload for e in emitted]
    (result,) = results
    assert result.delivered == 9
    assert [d.status for d in deliveries_of(stuck)] == ["delivered"] * 3
    assert {d.status for d in deliveries_of(first) + deliveries_of(second)} == {"delivered"}


def test_a_receiver_that_times_out_is_left_alone_for_the_rest_of_the_pass(org, owner, config):
    config["WEBHOOK_TIMEOUT"] = 0.5
    with receiving("hang") as hanging, receiving() as fine:
        stuck, _ = add_endpoint(org, hanging.url)
        add_endpoint(org, fine.url)
        emit(org, 4)
        result = deliver_due()
        assert hanging.arrived == 1  # one attempt, not four timeouts in a row
        assert len(fine.requests) == 4
    assert result.delivered == 4 and result.retrying == 1 and result.released == 3
    tried, *waiting = sorted(deliveries_of(stuck), key=lambda d: -d.attempts)
    (attempt,) = attempts_of(tried)
    assert attempt.status_code is None and attempt.error == "No answer within 0.5 s (timed out)"
    assert all(d.attempts == 0 and d.status == "pending" for d in waiting)


def test_a_paused_endpoint_keeps_its_deliveries_until_it_is_resumed(org, owner):
    with receiving() as receiver:
        endpoint, secret = add_endpoint(org, receiver.url, paused_at=utcnow())
        emitted = emit(org, 2)
        assert deliver_due().attempted == 0
        assert receiver.requests == [] and {d.status for d in deliveries_of(endpoint)} == {"pending"}
        db.session.get(WebhookEndpoint, endpoint.id).paused_at = None
        db.session.commit()
        assert deliver_due().delivered == 2
    assert sorted(p["id"] for p in receiver.payloads(secret)) == sorted(e.payload["id"] for e in emitted)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "private or local"),
        ("localhost", "internal hosts"),
        ("[::1]", "private or local"),
        ("[::ffff:127.0.0.1]", "private or local"),
        ("127.1", "resolves to 127.0.0.1, which is not a public address"),  # a name for loopback
        ("2130706433", "resolves to 127.0.0.1, which is not a public address"),
        ("169.254.169.254", "private or local"),
        ("10.0.0.1", "private or local"),
    ],
)
def test_private_destinations_are_refused_with_the_reason_in_the_log(org, owner, config, host, why):
    with receiving() as receiver:
        endpoint, _ = add_endpoint(org, f"https://{host}:{receiver.port}/hooks")  # saved while it was allowed
        config["WEBHOOK_ALLOW_PRIVATE"] = False
        emit(org)
        result = deliver_due()
        assert receiver.arrived == 0
    assert result.retrying == 1
    (delivery,) = deliveries_of(endpoint)
    (attempt,) = attempts_of(delivery)
    assert attempt.status_code is None and attempt.error.startswith("Not sent: ") and why in attempt.error
    assert delivery.status == "pending" and delivery.attempts == 1  # retried like any failure


def test_a_plain_http_url_is_refused_without_the_private_override(org, owner, config):
    endpoint, _ = add_endpoint(org, "http://hooks.example.com/procode")
    config["WEBHOOK_ALLOW_PRIVATE"] = False
    emit(org)
    deliver_due()
    (delivery,) = deliveries_of(endpoint)
    (attempt,) = attempts_of(delivery)
    assert attempt.error.startswith("Not sent: ") and "https" in attempt.error


def test_a_redirect_is_not_followed(org, owner):
    import http.server

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_response(307)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint, _ = add_endpoint(org, f"http://127.0.0.1:{server.server_address[1]}/")
        emit(org)
        deliver_due()
    finally:
        server.shutdown()
        server.server_close()
    (delivery,) = deliveries_of(endpoint)
    (attempt,) = attempts_of(delivery)
    assert attempt.status_code == 307 and attempt.error == "HTTP 307 (redirects are not followed)"
    assert delivery.status == "pending"


def test_more_deliveries_than_a_lane_takes_all_go_out_in_one_pass_over_few_connections(org, owner):
    with receiving() as receiver:
        endpoint, secret = add_endpoint(org, receiver.url)
        emitted = emit(org, PER_LANE + 5)
        result = deliver_due()
    assert result.delivered == PER_LANE + 5
    assert sorted(p["id"] for p in receiver.payloads(secret)) == sorted(e.payload["id"] for e in emitted)
    assert len({r.client_port for r in receiver.requests}) == 2  # one kept-alive connection per lane


def test_flask_webhooks_deliver_sends_what_is_due(app, org, owner):
    with receiving() as receiver:
        add_endpoint(org, receiver.url)
        emit(org, 2)
        out = app.test_cli_runner().invoke(args=["webhooks", "deliver"])
    assert out.exit_code == 0, out.output
    assert "delivered 2, will retry 0, gave up on 0" in out.output
    assert len(receiver.requests) == 2


def test_the_signature_is_the_one_standardwebhooks_computes(org):
    from portal.notify import signing

    secret = endpoints.new_secret()
    keys = endpoints.SigningKeys(endpoints.secret_bytes(secret), None)
    data = signing.body({"id": "evt_1", "data": {"name": "Zoë"}})
    ours = signing.headers(keys, "evt_1", 1_700_000_000, data)["webhook-signature"]
    from datetime import UTC, datetime

    theirs = standardwebhooks.Webhook(secret).sign("evt_1", datetime.fromtimestamp(1_700_000_000, UTC), data.decode())
    assert ours == theirs
