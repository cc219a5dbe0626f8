"""``flask mail``: send-pending, list and test, through the real SMTP test server."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal import create_app, mail
from portal.config import ConfigError
from portal.extensions import db
from portal.models import OutboxMail
from portal.timeutil import utcnow


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def test_send_pending_delivers_due_mail(cli, mail_server):
    mail.enqueue("a@example.com", "test_message")
    mail.enqueue("b@example.com", "test_message")
    db.session.commit()

    result = cli("mail", "send-pending")

    assert result.exit_code == 0, result.output
    assert "sent 2, will retry 0, gave up on 0" in result.output
    assert sorted(r.rcpt_tos[0] for r in mail_server.received) == ["a@example.com", "b@example.com"]


def test_send_pending_without_mail_url_says_so(cli):
    result = cli("mail", "send-pending")
    assert result.exit_code != 0 and "MAIL_URL is not set" in result.output


def test_list_shows_counts_and_troubled_mail(cli, mail_server):
    mail_server.handler.refuse = 1
    mail.enqueue("bounce@example.com", "test_message")
    db.session.commit()
    mail.send_due()
    db.session.add(
        OutboxMail(to_address="c@example.com", subject="s", body_text="b", template="test_message", sent_at=utcnow())
    )
    db.session.commit()

    result = cli("mail", "list")

    assert result.exit_code == 0, result.output
    assert "pending 1 (retrying 1), failed 0, sent 1" in result.output
    assert "bounce@example.com" in result.output and "550 5.7.1" in result.output


def test_test_command_sends_a_test_message(cli, mail_server):
    result = cli("mail", "test", "--to", "ops@example.com")
    assert result.exit_code == 0, result.output
    assert "sent test message" in result.output
    [got] = mail_server.received
    assert got.rcpt_tos == ["ops@example.com"] and got.message["Subject"] == "ProCode Portal test message"


def test_test_command_reports_a_server_that_is_down(app, cli):
    from tests.mailserver import MailServer, free_port

    saved = app.config["MAIL_URL"]
    app.config["MAIL_URL"] = MailServer(free_port()).url()
    try:
        result = cli("mail", "test", "--to", "ops@example.com")
    finally:
        app.config["MAIL_URL"] = saved
    assert result.exit_code != 0 and "not delivered yet" in result.output and "ConnectionRefused" in result.output
    row = db.session.scalar(sa.select(OutboxMail).filter_by(to_address="ops@example.com"))
    assert row.attempts == 1 and row.next_attempt_at > utcnow() + timedelta(seconds=20)


def test_a_bad_mail_url_stops_the_start(database_url):
    with pytest.raises(ConfigError, match=r"smtp:// or smtps://.*u:\*\*\*@"):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "MAIL_URL": "http://u:hunter2@h"}, env="testing")


def test_production_needs_mail_from_with_mail_url():
    from portal.config import Config

    with pytest.raises(ConfigError, match="MAIL_FROM"):
        Config.validate({"SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "p" * 32, "MAIL_URL": "smtp://h"})
    Config.validate({"SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "p" * 32})  # no mail: starts, keeps mail pending


def test_settings_per_environment():
    from portal.config import Config, DevConfig, TestConfig

    assert Config.MAIL_SENDER_THREAD and DevConfig.MAIL_SENDER_THREAD and not TestConfig.MAIL_SENDER_THREAD
    assert DevConfig.MAIL_CONSOLE and not Config.MAIL_CONSOLE and not TestConfig.MAIL_CONSOLE
    assert Config.PUBLIC_BASE_URL is None and DevConfig.PUBLIC_BASE_URL == "http://127.0.0.1:5000"


def test_prune_deletes_sent_mail_older_than_the_given_days(cli):
    now = utcnow()
    for to, sent in (("old@example.com", now - timedelta(days=31)), ("recent@example.com", now - timedelta(days=29))):
        db.session.add(OutboxMail(to_address=to, subject="s", body_text="", template="test_message", sent_at=sent))
    db.session.add(OutboxMail(to_address="pending@example.com", subject="s", body_text="b", template="test_message"))
    db.session.commit()

    result = cli("mail", "prune")

    assert result.exit_code == 0, result.output
    assert "deleted 1 sent mail older than 30 days" in result.output
    left = db.session.scalars(sa.select(OutboxMail.to_address).order_by(OutboxMail.to_address)).all()
    assert left == ["pending@example.com", "recent@example.com"]
    assert "deleted 1 " in cli("mail", "prune", "--days", "1").output
    assert cli("mail", "prune", "--days", "0").exit_code != 0
