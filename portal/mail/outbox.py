"""Writing mail: render a template into an outbox row, in the caller's transaction.

``enqueue()`` only adds the row to ``db.session``; the caller commits it together with the change that causes
the mail (an account, a reset token …), so a mail is sent if and only if that change is kept. The sender
(portal/mail/sender.py) delivers committed rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app
from jinja2 import TemplateNotFound

from portal.extensions import db
from portal.models import OutboxMail
from portal.timeutil import utcnow

ENQUEUED = "portal.mail.enqueued"  # db.session.info flag: this transaction added mail (wakes the sender)
SUBJECT_LENGTH = 200


class MailConfigError(RuntimeError):
    """Mail cannot be rendered with this configuration (no ``PUBLIC_BASE_URL``)."""


def enqueue(to: str, template: str, **context: Any) -> OutboxMail:
    """Render ``templates/mail/<template>.txt`` (and ``.html`` when present) and add the mail to the session.

    The text template sets the subject with ``{% set subject = "…" %}``. Templates get ``base_url`` and
    ``external_url(endpoint, **values)`` for absolute links. Nothing is committed here.
    """
    if not to or any(c in to for c in "\r\n\x00") or "@" not in to:
        raise ValueError(f"not a mail address: {to!r}")
    subject, text, html = render(template, **context)
    mail = OutboxMail(to_address=to, subject=subject, body_text=text, body_html=html, template=template)
    db.session.add(mail)
    db.session.info[ENQUEUED] = True
    return mail


def render(template: str, **context: Any) -> tuple[str, str, str | None]:
    """(subject, text body, HTML body or None) for ``templates/mail/<template>``."""
    base = public_base_url()
    env = current_app.jinja_env
    values = {"base_url": base, "external_url": _url_builder(base), **context}
    module = env.get_template(f"mail/{template}.txt").make_module(values)
    subject = " ".join(str(getattr(module, "subject", "")).split())
    if not subject:
        raise ValueError(f"mail/{template}.txt sets no subject")
    html_name = f"mail/{template}.html"
    try:
        html: str | None = env.get_template(html_name).render(subject=subject, **values)
    except TemplateNotFound as exc:
        if exc.name != html_name:
            raise
        html = None  # text-only mail
    return subject[:SUBJECT_LENGTH], str(module).strip() + "\n", html


def public_base_url() -> str:
    base = current_app.config.get("PUBLIC_BASE_URL")
    if not base:
        raise MailConfigError("PUBLIC_BASE_URL is not set: mail needs the portal's public address for its links")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MailConfigError(f"PUBLIC_BASE_URL must be an http(s) URL, got {base!r}")
    return base.rstrip("/")


def _url_builder(base: str) -> Any:
    """``external_url(endpoint, **values)``: the app's URL for an endpoint, under ``PUBLIC_BASE_URL``."""
    parts = urlsplit(base)
    adapter = current_app.url_map.bind(parts.netloc, script_name=parts.path or "/", url_scheme=parts.scheme)

    def external_url(endpoint: str, **values: Any) -> str:
        return adapter.build(endpoint, values, force_external=True)

    return external_url


# Staff: what needs attention. Metadata only; bodies may hold one-time links.


@dataclass(frozen=True)
class OutboxCounts:
    pending: int  # not sent yet, still being tried
    retrying: int  # of those, the ones that failed at least once
    failed: int  # given up
    sent: int


def counts() -> OutboxCounts:
    row = db.session.execute(
        sa.select(
            sa.func.count().filter(OutboxMail.sent_at.is_(None), OutboxMail.failed_at.is_(None)),
            sa.func.count().filter(
                OutboxMail.sent_at.is_(None), OutboxMail.failed_at.is_(None), OutboxMail.attempts > 0
            ),
            sa.func.count().filter(OutboxMail.failed_at.is_not(None), OutboxMail.sent_at.is_(None)),
            sa.func.count().filter(OutboxMail.sent_at.is_not(None)),
        )
    ).one()
    return OutboxCounts(*(int(v) for v in row))


def problems(limit: int = 200) -> list[OutboxMail]:
    """Failed mail and pending mail that has failed at least once, most recent trouble first."""
    return list(
        db.session.scalars(
            sa.select(OutboxMail)
            .where(OutboxMail.sent_at.is_(None), sa.or_(OutboxMail.failed_at.is_not(None), OutboxMail.attempts > 0))
            .order_by(OutboxMail.failed_at.desc().nulls_last(), OutboxMail.next_attempt_at.desc())
            .limit(limit)
        )
    )


def retry(mail_id: uuid.UUID, *, now: datetime | None = None) -> OutboxMail | None:
    """Try an unsent mail again now; a failed one gets one more attempt. None for a sent or unknown mail, and
    for one whose bodies were cleared when it was given up (the member asks for a new link instead)."""
    mail = db.session.get(OutboxMail, mail_id, with_for_update=True)
    if mail is None or mail.sent_at is not None or not mail.body_text:
        return None
    mail.failed_at = None
    mail.next_attempt_at = now or utcnow()
    db.session.info[ENQUEUED] = True
    return mail


def prune(*, sent_before: timedelta) -> int:
    """Delete mail sent more than ``sent_before`` ago (no commit); how many rows."""
    result: Any = db.session.execute(sa.delete(OutboxMail).where(OutboxMail.sent_at < utcnow() - sent_before))
    return int(result.rowcount)
