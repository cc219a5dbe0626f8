"""Delivering mail: due outbox rows go out one at a time, each under a row lock.

Every row is picked with ``SELECT … FOR UPDATE SKIP LOCKED`` and its outcome committed before the next pick, so
any number of threads and processes can send at once and none sends a row another holds. Delivery is at least
once: a process that dies after the server took a message but before its commit sends it again later, with
the same ``Message-ID`` (derived from the row id) so the duplicate can be recognised. A failure is retried
after ``MAIL_RETRY_BASE`` seconds, doubling up to ``MAIL_RETRY_CAP``; after ``MAIL_MAX_ATTEMPTS`` the row is
marked failed and shown to staff at /staff/mail.

Once a mail is sent, or given up, its bodies are cleared (subject and metadata stay): they may hold live
one-time links, which must not sit in the table, its backups or replicas, for anyone who can read them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal.extensions import db
from portal.mail.smtp import (
    ERROR_LENGTH,
    ConnectionFailure,
    ConsoleTransport,
    DeliveryError,
    SmtpSettings,
    SmtpTransport,
    Transport,
)
from portal.models import OutboxMail
from portal.timeutil import utcnow

log = logging.getLogger("portal.mail")
BATCH = 100  # rows per pass; the sender thread starts another pass at once when a pass was full


@dataclass
class SendResult:
    sent: int = 0
    retrying: int = 0  # failed this time, tried again later
    failed: int = 0  # failed for the last time

    @property
    def attempted(self) -> int:
        return self.sent + self.retrying + self.failed


def transport_from_config(config: Mapping[str, Any]) -> Transport | None:
    """SMTP with ``MAIL_URL``; the terminal with ``MAIL_CONSOLE``; else None (mail stays pending)."""
    if config.get("MAIL_URL"):
        return SmtpTransport(SmtpSettings.from_url(config["MAIL_URL"], timeout=config["MAIL_SMTP_TIMEOUT"]))
    if config.get("MAIL_CONSOLE"):
        return ConsoleTransport()
    return None


def backoff(attempts: int, base: float, cap: float) -> timedelta:
    """Wait before the next try after ``attempts`` failures: base, 2·base, 4·base … at most cap."""
    return timedelta(seconds=min(base * 2 ** min(max(attempts - 1, 0), 30), cap))


def message_id(mail: OutboxMail, sender: str) -> str:
    """Stable per row, so a resend after a crash carries the same id."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "procode.invalid"
    return f"<{mail.id}@{domain}>"


def build_message(mail: OutboxMail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to_address
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(mail.created_at)
    message["Message-ID"] = message_id(mail, sender)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
    message.set_content(mail.body_text)
    if mail.body_html:
        message.add_alternative(mail.body_html, subtype="html")
    return message


def send_due(*, now: datetime | None = None, limit: int = BATCH, transport: Transport | None = None) -> SendResult:
    """Deliver the mail due at ``now`` (at most ``limit``) through ``db.session``; each outcome is committed.

    ``transport`` defaults to the configured one; with none configured nothing is sent and mail stays pending.
    """
    config = current_app.config
    transport = transport or transport_from_config(config)
    result = SendResult()
    if transport is None:
        return result
    moment = now or utcnow()
    sender = config.get("MAIL_FROM") or "ProCode Portal <no-reply@procode.invalid>"
    try:
        while result.attempted < limit:
            mail = _pick(moment)
            if mail is None:
                break
            try:
                try:
                    message = build_message(mail, sender)
                except Exception as exc:  # a row that cannot become a message must not block the ones behind it
                    raise DeliveryError(f"cannot build the message: {exc}") from None
                transport.send(message)
            except DeliveryError as exc:
                gave_up = _record_failure(mail, str(exc), moment, config)
                db.session.commit()
                if gave_up:
                    result.failed += 1
                else:
                    result.retrying += 1
                if isinstance(exc, ConnectionFailure):
                    break  # the next mail would fail the same way
                continue
            except BaseException:
                db.session.rollback()  # unlock the row: it stays due and is tried again
                raise
            mail.sent_at = moment
            mail.last_error = None
            clear_bodies(mail)
            db.session.commit()
            result.sent += 1
    finally:
        transport.close()
    return result


def _pick(moment: datetime) -> OutboxMail | None:
    return db.session.scalars(
        sa.select(OutboxMail)
        .where(OutboxMail.sent_at.is_(None), OutboxMail.failed_at.is_(None), OutboxMail.next_attempt_at <= moment)
        .order_by(OutboxMail.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()


def _record_failure(mail: OutboxMail, error: str, moment: datetime, config: Mapping[str, Any]) -> bool:
    """Count the attempt; True when it was the last one."""
    mail.attempts += 1
    mail.last_error = error[:ERROR_LENGTH]
    if mail.attempts >= config["MAIL_MAX_ATTEMPTS"]:
        mail.failed_at = moment
        clear_bodies(mail)
        log.warning("mail %s given up after %d attempts: %s", mail.id, mail.attempts, mail.last_error)
        return True
    mail.next_attempt_at = moment + backoff(mail.attempts, config["MAIL_RETRY_BASE"], config["MAIL_RETRY_CAP"])
    log.info("mail %s attempt %d failed, next at %s: %s", mail.id, mail.attempts, mail.next_attempt_at, error)
    return False


def clear_bodies(mail: OutboxMail) -> None:
    """Keep the subject and metadata of a mail that is done with, not what it said (it may hold live links)."""
    mail.body_text = ""
    mail.body_html = None
