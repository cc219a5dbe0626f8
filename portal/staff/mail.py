"""Staff: mail that keeps failing, and a button to try it again. Metadata only, never a body."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user

from portal import mail
from portal.extensions import db
from portal.staff import bp

log = logging.getLogger("portal.mail")


@bp.get("/mail")
def mail_outbox() -> Any:
    return render_template("staff/mail.html", counts=mail.counts(), rows=mail.problems())


@bp.post("/mail/<mail_id>/retry")
def mail_retry(mail_id: str) -> Any:
    try:
        row = mail.retry(uuid.UUID(mail_id))
    except ValueError:
        row = None
    if row is None:
        abort(404)
    db.session.commit()
    log.info("mail %s queued again by staff user %s", row.id, current_user.id)
    flash(f"The mail to {row.to_address} will be tried again in a moment.", "success")
    return redirect(url_for("staff.mail_outbox"))
