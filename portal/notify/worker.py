"""The webhook deliverer: one thread per web process (portal/background.py), started at its first request.

It runs a pass every ``WEBHOOK_POLL_INTERVAL`` seconds, and at once when a commit queued deliveries (``emit()``
marks the session with ``WEBHOOKS_ENQUEUED``). Under a gevent worker the thread and the pool its lanes run in
are greenlets: every wait on a receiver, on DNS or on the database yields, so a hanging receiver holds no page
and no verification.
"""

from __future__ import annotations

from flask import Flask

from portal.background import PassThread, wake_after_commit
from portal.notify.delivery import BATCH, deliver_due
from portal.notify.events import WEBHOOKS_ENQUEUED

EXTENSION = "portal.webhook_deliverer"


class DelivererThread(PassThread):
    def __init__(self, app: Flask, *, interval: float) -> None:
        super().__init__(app, name="webhook-deliverer", interval=interval, work=lambda: deliver_due().claimed >= BATCH)


def init_app(app: Flask) -> None:
    """Wake the deliverer after a commit that queued deliveries; start it with the process's first request."""
    wake_after_commit(WEBHOOKS_ENQUEUED, EXTENSION)
    if app.config["WEBHOOK_DELIVERER_THREAD"]:
        deliverer = DelivererThread(app, interval=float(app.config["WEBHOOK_POLL_INTERVAL"]))
        app.extensions[EXTENSION] = deliverer
        app.before_request(deliverer.ensure_started)  # web processes only; a cheap pid check once started
