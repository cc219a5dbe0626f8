"""``flask mail``: deliver pending mail now, see the outbox, send a test message, delete old sent mail."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app

from portal import mail
from portal.extensions import db


@click.group("mail")
def mail_group() -> None:
    """Transactional mail: the outbox and its delivery."""


def _no_transport_note() -> str | None:
    if mail.transport_from_config(current_app.config) is None:
        return "MAIL_URL is not set: mail stays pending until it is."
    return None


@mail_group.command("send-pending")
def send_pending() -> None:
    """Deliver the mail that is due, once (web processes also do this in a background thread)."""
    note = _no_transport_note()
    if note:
        raise click.ClickException(note)
    total = mail.SendResult()
    while True:
        result = mail.send_due()
        total.sent += result.sent
        total.retrying += result.retrying
        total.failed += result.failed
        if result.attempted < mail.BATCH:  # a short pass: nothing else is due, or the server is unreachable
            break
    click.echo(f"sent {total.sent}, will retry {total.retrying}, gave up on {total.failed}")


@mail_group.command("list")
def list_outbox() -> None:
    """Counts of pending, retrying, failed and sent mail, and the mail that needs attention."""
    counts = mail.counts()
    click.echo(f"pending {counts.pending} (retrying {counts.retrying}), failed {counts.failed}, sent {counts.sent}")
    for row in mail.problems(limit=50):
        state = "failed" if row.failed_at else f"next try {row.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"
        click.echo(f"{row.id}  {row.to_address}  {row.template}  attempts {row.attempts}  {state}  {row.last_error}")
    note = _no_transport_note()
    if note:
        click.echo(note, err=True)


@mail_group.command("test")
@click.option("--to", "to", required=True, help="Recipient address.")
def send_test(to: str) -> None:
    """Send a test message now (enqueued like any mail, then delivered)."""
    try:
        row = mail.enqueue(to, "test_message", requested_by="the flask mail test command")
    except mail.MailConfigError as exc:
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    note = _no_transport_note()
    if note:
        raise click.ClickException(f"queued {row.id}; {note}")
    result = mail.send_due()
    db.session.refresh(row)
    if row.sent_at is not None:
        click.echo(f"sent test message {row.id} to {to}")
    else:
        raise click.ClickException(f"test message {row.id} not delivered yet: {row.last_error or 'pending'}")
    if result.attempted > 1:
        click.echo(f"(and {result.attempted - 1} other due mail)", err=True)


@mail_group.command("prune")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="Keep mail sent since.")
def prune(days: int) -> None:
    """Delete sent mail older than --days (what a sent mail said is cleared when it is sent)."""
    deleted = mail.prune(sent_before=timedelta(days=days))
    db.session.commit()
    click.echo(f"deleted {deleted} sent mail older than {days} days")
