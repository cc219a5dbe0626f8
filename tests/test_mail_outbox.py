"""Mail goes out through a real SMTP server (aiosmtpd on loopback), at least once, and is never lost."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal import mail
from portal.extensions import db
from portal.models import OutboxMail
from portal.timeutil import utcnow
from tests import factories
from tests.mailserver import MailServer, free_port

LOGIN_URL = "http://127.0.0.1:5000/login"


def _outbox() -> list[OutboxMail]:
    return list(db.session.scalars(sa.select(OutboxMail).order_by(OutboxMail.created_at)))


def test_committed_mail_is_delivered_with_text_html_and_absolute_links(mail_server):
    row = mail.enqueue("ada@example.com", "test_message", requested_by="Ada")
    assert row.id is None or db.session.get(OutboxMail, row.id) is row  # only added, not committed yet
    db.session.commit()

    result = mail.send_due()

    assert (result.sent, result.retrying, result.failed) == (1, 0, 0)
    [got] = mail_server.received
    assert got.mail_from == "no-reply@procode.dev" and got.rcpt_tos == ["ada@example.com"]
    assert got.message["To"] == "ada@example.com"
    assert got.message["From"] == "ProCode Portal <no-reply@procode.dev>"
    assert got.message["Subject"] == "ProCode Portal test message"
    assert got.message["Message-ID"] == f"<{row.id}@procode.dev>"
    assert got.message["Auto-Submitted"] == "auto-generated"
    text, html = got.part("plain"), got.part("html")
    assert "sent by Ada" in text and LOGIN_URL in text
    assert f'href="{LOGIN_URL}"' in html and "<title>ProCode Portal test message</title>" in html
    db.session.refresh(row)
    assert row.sent_at is not None and row.attempts == 0 and row.last_error is None
    # What it said is not kept once it is sent (mail may hold live one-time links); the metadata is.
    assert row.body_text == "" and row.body_html is None and row.subject == "ProCode Portal test message"
    assert mail.send_due().attempted == 0  # sent once, not again


def test_mail_of_a_rolled_back_change_is_never_sent(mail_server):
    org = factories.org()
    org.name = "Renamed"
    mail.enqueue("ada@example.com", "test_message")
    db.session.rollback()

    assert mail.send_due().attempted == 0
    assert mail_server.received == [] and _outbox() == []


def test_server_down_keeps_the_mail_and_a_later_pass_delivers_it(app):
    server = MailServer(free_port())  # nothing listens on this port yet
    saved = app.config["MAIL_URL"]
    app.config["MAIL_URL"] = server.url()
    try:
        row = mail.enqueue("ada@example.com", "test_message")
        db.session.commit()
        before = utcnow()

        result = mail.send_due()

        assert (result.sent, result.retrying) == (0, 1)
        db.session.refresh(row)
        assert row.sent_at is None and row.failed_at is None and row.attempts == 1
        assert f"127.0.0.1:{server.port}" in row.last_error and "ConnectionRefusedError" in row.last_error
        assert row.next_attempt_at >= before + timedelta(seconds=29)

        server.start()
        assert mail.send_due().attempted == 0  # not due yet: the backoff holds
        result = mail.send_due(now=utcnow() + timedelta(seconds=31))
        assert result.sent == 1 and len(server.received) == 1
        db.session.refresh(row)
        assert row.sent_at is not None and row.attempts == 1 and row.last_error is None
    finally:
        app.config["MAIL_URL"] = saved
        server.stop()


def test_backoff_doubles_up_to_the_cap():
    waits = [mail.sender.backoff(n, 30, 3600).total_seconds() for n in range(1, 11)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_one_refused_mail_does_not_hold_up_the_others(mail_server):
    mail_server.handler.refuse = 1
    mail.enqueue("first@example.com", "test_message")
    mail.enqueue("second@example.com", "test_message")
    db.session.commit()

    result = mail.send_due(now=utcnow() + timedelta(seconds=1))

    assert (result.sent, result.retrying) == (1, 1)
    assert [r.rcpt_tos for r in mail_server.received] in ([["second@example.com"]], [["first@example.com"]])
    refused = [row for row in _outbox() if row.sent_at is None]
    assert len(refused) == 1 and refused[0].last_error.startswith("550 5.7.1 Message refused")


def test_a_mail_refused_every_time_is_given_up_and_shown_to_staff(app, mail_server, client, auth, staff, owner):
    mail_server.handler.refuse = 1000
    row = mail.enqueue("bounce@example.com", "test_message")
    db.session.commit()
    start = utcnow()
    attempts = app.config["MAIL_MAX_ATTEMPTS"]

    outcomes = [mail.send_due(now=start + timedelta(days=i)) for i in range(attempts + 1)]

    assert [o.retrying for o in outcomes[:-2]] == [1] * (attempts - 1)
    assert outcomes[-2].failed == 1 and outcomes[-1].attempted == 0
    db.session.refresh(row)
    assert row.attempts == attempts and row.failed_at is not None and row.sent_at is None
    assert row.last_error.startswith("550 5.7.1")
    assert mail.counts().failed == 1

    # Hidden from anyone but staff.
    assert client.get("/staff/mail").status_code == 404
    auth.login(owner)
    assert client.get("/staff/mail").status_code == 404
    assert client.post(f"/staff/mail/{row.id}/retry").status_code == 404
    auth.logout()

    auth.login(staff)
    page = client.get("/staff/mail")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "bounce@example.com" in body and "ProCode Portal test message" in body and "550 5.7.1" in body
    assert "mail delivery works" not in body  # metadata only, never the body

    # Given up, what it said is gone (it may have held a live link): it cannot be tried again.
    assert row.body_text == "" and row.body_html is None and row.subject == "ProCode Portal test message"
    assert "Content cleared" in body
    assert client.post(f"/staff/mail/{row.id}/retry").status_code == 404

    # A mail still being retried can be tried again now; this time the server takes it.
    mail_server.handler.refuse = 1
    later = mail.enqueue("later@example.com", "test_message")
    db.session.commit()
    assert mail.send_due().retrying == 1
    answer = client.post(f"/staff/mail/{later.id}/retry")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/staff/mail")
    db.session.refresh(later)
    assert later.failed_at is None and later.next_attempt_at <= utcnow()
    assert mail.send_due().sent == 1
    assert client.post(f"/staff/mail/{later.id}/retry").status_code == 404  # sent: nothing to retry
    assert client.post(f"/staff/mail/{uuid.uuid4()}/retry").status_code == 404
    assert client.post("/staff/mail/not-a-uuid/retry").status_code == 404


def test_staff_retry_needs_the_csrf_token(csrf_app, client, auth, staff):
    row = OutboxMail(
        to_address="x@example.com", subject="S", body_text="b", template="test_message", attempts=10, failed_at=utcnow()
    )
    db.session.add(row)
    db.session.commit()
    csrf_app.config["WTF_CSRF_ENABLED"] = False  # sign in without a token; the retry below needs one
    auth.login(staff)
    csrf_app.config["WTF_CSRF_ENABLED"] = True
    assert client.post(f"/staff/mail/{row.id}/retry").status_code == 400
    page = client.get("/staff/mail").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert client.post(f"/staff/mail/{row.id}/retry", data={"csrf_token": token}).status_code == 302


def test_login_and_password_never_appear_in_errors_or_logs(app, caplog):
    server = MailServer(login=("ops", "right-pass"))
    saved = app.config["MAIL_URL"]
    try:
        server.start()
        app.config["MAIL_URL"] = server.url("ops:wrong%2Fsecret-pass")
        row = mail.enqueue("ada@example.com", "test_message")
        db.session.commit()
        with caplog.at_level("INFO", logger="portal"):
            assert mail.send_due().retrying == 1
        db.session.refresh(row)
        assert "535" in row.last_error
        for text in (row.last_error, caplog.text):
            assert "wrong/secret-pass" not in text and "wrong%2Fsecret-pass" not in text

        app.config["MAIL_URL"] = server.url("ops:right-pass")
        assert mail.send_due(now=utcnow() + timedelta(minutes=1)).sent == 1
    finally:
        app.config["MAIL_URL"] = saved
        server.stop()


def test_mail_url_forms_and_redaction():
    s = mail.SmtpSettings.from_url("smtp://me%40x.com:p%40ss@mail.example.com:587?starttls=1")
    assert (s.host, s.port, s.username, s.password, s.starttls, s.implicit_tls) == (
        "mail.example.com",
        587,
        "me@x.com",
        "p@ss",
        True,
        False,
    )
    s = mail.SmtpSettings.from_url("smtps://u:p@mail.example.com")
    assert (s.port, s.implicit_tls) == (465, True)
    s = mail.SmtpSettings.from_url("smtp://localhost")
    assert (s.port, s.username, s.password) == (25, None, None)
    assert mail.smtp.redact_url("smtp://u:hunter2@h:587?starttls=1") == "smtp://u:***@h:587?starttls=1"
    for bad in ("http://u:hunter2@h", "smtp://u:hunter2@h?timeout=soon", "smtps://u:hunter2@h?starttls=1"):
        with pytest.raises(mail.smtp.ConfigError) as exc:
            mail.SmtpSettings.from_url(bad)
        assert "hunter2" not in str(exc.value) and "***" in str(exc.value)


def test_an_address_that_would_break_the_headers_is_refused_at_once():
    for bad in ("", "no-at-sign", "a@example.com\r\nBcc: victim@example.com"):
        with pytest.raises(ValueError, match="not a mail address"):
            mail.enqueue(bad, "test_message")
    assert _outbox() == []


def test_no_mail_url_keeps_mail_pending(app):
    assert app.config["MAIL_URL"] is None and not app.config["MAIL_CONSOLE"]
    row = mail.enqueue("ada@example.com", "test_message")
    db.session.commit()
    assert mail.send_due().attempted == 0
    db.session.refresh(row)
    assert row.sent_at is None and row.attempts == 0


def test_development_prints_mail_with_its_links(app, capsys):
    app.config["MAIL_CONSOLE"] = True
    try:
        row = mail.enqueue("dev@example.com", "test_message")
        db.session.commit()
        assert mail.send_due().sent == 1
    finally:
        app.config["MAIL_CONSOLE"] = False
    out = capsys.readouterr().out
    assert "Mail to dev@example.com" in out and "Subject: ProCode Portal test message" in out and LOGIN_URL in out
    db.session.refresh(row)
    assert row.sent_at is not None


def test_links_follow_public_base_url(app):
    saved = app.config["PUBLIC_BASE_URL"]
    try:
        app.config["PUBLIC_BASE_URL"] = "https://portal.example.com/app/"
        _, text, html = mail.render("test_message")
        assert "https://portal.example.com/app/login" in text and 'href="https://portal.example.com/app/login"' in html
        app.config["PUBLIC_BASE_URL"] = None
        with pytest.raises(mail.MailConfigError, match="PUBLIC_BASE_URL"):
            mail.enqueue("ada@example.com", "test_message")
    finally:
        app.config["PUBLIC_BASE_URL"] = saved


def test_html_is_escaped_and_text_is_not(app):
    _, text, html = mail.render("test_message", requested_by="<Ada & Bob>")
    assert "sent by <Ada & Bob>" in text
    assert html is not None and "&lt;Ada &amp; Bob&gt;" in html


def test_starttls_with_login(app, tmp_path):
    import ssl

    from tests.mailserver import self_signed_certificate

    pem = self_signed_certificate(tmp_path)
    if pem is None:
        pytest.skip("no openssl tool to make a certificate")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pem, tmp_path / "key.pem")
    client_tls = ssl.create_default_context(cafile=str(pem))
    server = MailServer(login=("ops", "right-pass"), tls_context=server_tls)
    try:
        server.start()
        settings = mail.SmtpSettings.from_url(server.url("ops:right-pass", "starttls=1"))
        mail.enqueue("ada@example.com", "test_message")
        db.session.commit()
        result = mail.send_due(transport=mail.smtp.SmtpTransport(settings, tls_context=client_tls))
        assert result.sent == 1 and len(server.received) == 1
        # Without STARTTLS the server (which requires it) refuses, and the mail waits.
        plain = mail.SmtpSettings.from_url(server.url())
        mail.enqueue("bob@example.com", "test_message")
        db.session.commit()
        assert mail.send_due(transport=mail.smtp.SmtpTransport(plain)).retrying == 1
    finally:
        server.stop()
