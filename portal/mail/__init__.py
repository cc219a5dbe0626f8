"""Transactional mail through an outbox: written with the change that causes it, delivered at least once.

``enqueue(to, template, **context)`` renders ``templates/mail/<template>.{txt,html}`` into a ``mail_outbox``
row in the caller's transaction; ``send_due()`` delivers due rows (the sender thread of each web process,
``flask mail send-pending``, or a test). See portal/config.py for the settings.
"""

from __future__ import annotations

import logging

from flask import Flask

from portal.mail.outbox import MailConfigError, counts, enqueue, problems, prune, render, retry
from portal.mail.sender import BATCH, SendResult, send_due, transport_from_config
from portal.mail.smtp import SmtpSettings

log = logging.getLogger("portal.mail")

__all__ = [
    "BATCH",
    "MailConfigError",
    "SendResult",
    "counts",
    "enqueue",
    "init_app",
    "problems",
    "prune",
    "render",
    "retry",
    "send_due",
    "transport_from_config",
]


def init_app(app: Flask) -> None:
    """Check ``MAIL_URL`` now (a typo fails the start, not the first mail) and set up the sender thread."""
    from portal.mail.worker import EXTENSION, SenderThread, install_session_hooks

    config = app.config
    if config.get("MAIL_URL"):
        SmtpSettings.from_url(config["MAIL_URL"])
    elif not config.get("MAIL_CONSOLE") and not app.testing:
        log.warning("MAIL_URL is not set: mail is kept in the outbox, unsent, until it is (see flask mail list)")
    install_session_hooks()
    if config["MAIL_SENDER_THREAD"] and (config.get("MAIL_URL") or config.get("MAIL_CONSOLE")):
        sender = SenderThread(app, interval=float(config["MAIL_POLL_INTERVAL"]))
        app.extensions[EXTENSION] = sender
        app.before_request(sender.ensure_started)  # web processes only; a cheap pid check once started
