"""Several senders at once, on committed mail: each mail goes out once; a commit wakes the sender thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from portal import mail
from portal.extensions import db
from portal.mail.worker import EXTENSION, SenderThread
from portal.models import OutboxMail

pytestmark = pytest.mark.concurrency


@pytest.fixture
def domain() -> Iterator[str]:
    """A recipient domain of this test's own; its committed mail is deleted afterwards."""
    name = f"{uuid.uuid4().hex[:12]}.example.com"
    yield name
    db.session.rollback()
    db.session.execute(sa.delete(OutboxMail).where(OutboxMail.to_address.endswith(f"@{name}")))
    db.session.commit()


def _sent(domain: str) -> int:
    return db.session.scalar(
        sa.select(sa.func.count()).where(OutboxMail.to_address.endswith(f"@{domain}"), OutboxMail.sent_at.is_not(None))
    )


def test_two_senders_never_send_one_mail_twice(app: Any, mail_server: Any, domain: str) -> None:
    count = 40
    for i in range(count):
        mail.enqueue(f"user{i}@{domain}", "test_message")
    db.session.commit()
    mail_server.handler.delay = 0.005  # keep both senders busy at the same time
    passes: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def sender(name: str) -> None:
        with app.app_context():
            start.wait()
            try:
                while (sent := mail.send_due(limit=5).sent) > 0:
                    passes[name].append(sent)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=sender, args=(name,)) for name in passes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    ids = Counter(r.message["Message-ID"] for r in mail_server.received)
    assert len(ids) == count and set(ids.values()) == {1}
    assert sum(passes["a"]) + sum(passes["b"]) == count
    assert passes["a"] and passes["b"]  # both took part
    assert _sent(domain) == count


def test_a_commit_that_enqueued_mail_wakes_the_sender_thread(app: Any, mail_server: Any, domain: str) -> None:
    sender = SenderThread(app, interval=60)  # polling alone would take a minute
    app.extensions[EXTENSION] = sender
    try:
        sender.ensure_started()
        mail.enqueue(f"woken@{domain}", "test_message")
        db.session.commit()
        deadline = time.monotonic() + 10
        while not mail_server.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.rcpt_tos for r in mail_server.received] == [[f"woken@{domain}"]]
    finally:
        sender.stop()
        del app.extensions[EXTENSION]
    assert _sent(domain) == 1


def test_a_rolled_back_enqueue_does_not_wake_the_sender(app: Any) -> None:
    woken: list[bool] = []

    class Probe:
        def wake(self) -> None:
            woken.append(True)

    app.extensions[EXTENSION] = Probe()
    try:
        mail.enqueue("nobody@example.com", "test_message")
        db.session.rollback()
        db.session.commit()
        assert woken == []
    finally:
        del app.extensions[EXTENSION]


def test_the_sender_thread_starts_at_a_process_first_request(database_url: str) -> None:
    from portal import create_app

    web = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "MAIL_SENDER_THREAD": True, "MAIL_CONSOLE": True}, env="testing"
    )
    sender = web.extensions[EXTENSION]
    assert sender._thread is None  # nothing at import or app creation
    try:
        assert web.test_client().get("/login").status_code == 200
        assert sender._thread is not None and sender._thread.is_alive()
    finally:
        sender.stop()
        with web.app_context():
            db.engine.dispose()
    assert not sender._thread.is_alive()
