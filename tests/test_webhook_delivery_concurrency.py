"""Webhook delivery on committed data: several deliverers at once send each delivery once; a commit wakes the
deliverer thread; in a real gunicorn, a receiver that hangs holds up no page and no verification."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import Organization, WebhookDelivery, WebhookEndpoint
from portal.notify.delivery import deliver_due
from portal.notify.worker import EXTENSION, DelivererThread
from tests import factories
from tests.servers import SECRETS, gunicorn
from tests.test_webhook_delivery import add_endpoint, emit
from tests.webhook_receiver import receiving

pytestmark = pytest.mark.concurrency


@pytest.fixture
def committed_org(app: Any) -> Iterator[Any]:
    """An organization of this test's own, committed; deleted afterwards with its endpoints and deliveries."""
    org = factories.org()
    yield org
    db.session.rollback()
    db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
    db.session.commit()


def _statuses(org: Any) -> Counter[str]:
    db.session.rollback()
    return Counter(
        db.session.scalars(
            sa.select(WebhookDelivery.status)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookEndpoint.organization_id == org.id)
        )
    )


def test_two_deliverers_never_send_one_delivery_twice(app, committed_org):
    with receiving() as first, receiving() as second, receiving() as third:
        receivers = (first, second, third)
        secrets = [add_endpoint(committed_org, r.url)[1] for r in receivers]
        emitted = emit(committed_org, 30)
        passes: dict[str, list[int]] = {"a": [], "b": []}
        start = threading.Barrier(2)

        def deliverer(name: str) -> None:
            with app.app_context():
                start.wait()
                try:
                    while (result := deliver_due(limit=7)).claimed:
                        passes[name].append(result.delivered)
                finally:
                    db.session.remove()

        threads = [threading.Thread(target=deliverer, args=(name,)) for name in passes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    expected = sorted(e.payload["id"] for e in emitted)
    for receiver, secret in zip(receivers, secrets, strict=True):
        received = [p["id"] for p in receiver.payloads(secret)]
        assert sorted(received) == expected  # every event, each exactly once
    assert sum(passes["a"]) + sum(passes["b"]) == 90
    assert passes["a"] and passes["b"]  # both took part
    assert _statuses(committed_org) == {"delivered": 90}


def test_a_commit_that_queued_deliveries_wakes_the_deliverer_thread(app, committed_org):
    deliverer = DelivererThread(app, interval=60)  # polling alone would take a minute
    app.extensions[EXTENSION] = deliverer
    try:
        with receiving() as receiver:
            _, secret = add_endpoint(committed_org, receiver.url)
            deliverer.ensure_started()
            (event,) = emit(committed_org)
            deadline = time.monotonic() + 15
            while not receiver.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert receiver.payloads(secret) == [event.payload]
    finally:
        deliverer.stop()
        del app.extensions[EXTENSION]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - the loopback test server
        return int(response.status)


def _verify(base: str, key: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the loopback test server
        f"{base}/v1/keys/verify",
        data=json.dumps({"key": key}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_a_hanging_receiver_holds_up_no_page_and_no_verification(app, committed_org, tmp_path):
    """One gevent worker, whose deliverer is stuck on a receiver that does not answer: the worker still serves a
    page and a verification, before the receiver is let go."""
    key = factories.api_key(committed_org, None).plaintext
    saved = app.config["SECRET_KEY"]
    app.config["SECRET_KEY"] = SECRETS["SECRET_KEY"]  # seal the signing secret as the served app will unseal it
    try:
        with receiving("hang") as receiver:
            _, secret = add_endpoint(committed_org, receiver.url)
            with gunicorn(
                app.config["SQLALCHEMY_DATABASE_URI"],
                tmp_path,
                GUNICORN_WORKERS="1",
                WEBHOOK_ALLOW_PRIVATE="1",
                WEBHOOK_TIMEOUT="120",  # the receiver holds the request until released
                WEBHOOK_POLL_INTERVAL="0.2",
            ) as base:
                (event,) = emit(committed_org)  # committed here; the worker's deliverer picks it up
                assert receiver.hanging.wait(60), "".join(p.read_text() for p in tmp_path.glob("gunicorn-*.log"))
                assert _get(f"{base}/login") == 200
                assert _verify(base, key)["valid"] is True
                assert receiver.requests == []  # still held: both were answered while the deliverer waits
                receiver.release()
                deadline = time.monotonic() + 30
                while _statuses(committed_org) != {"delivered": 1} and time.monotonic() < deadline:
                    time.sleep(0.1)
            assert receiver.payloads(secret) == [event.payload]
    finally:
        app.config["SECRET_KEY"] = saved
    assert _statuses(committed_org) == {"delivered": 1}
