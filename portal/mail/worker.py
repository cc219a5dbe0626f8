"""The sender thread: one per web process (portal/background.py), started at the process's first request.

It runs a pass every ``MAIL_POLL_INTERVAL`` seconds, and at once when a commit added mail: ``enqueue()`` marks
the session and the ``after_commit`` hook wakes the thread. Under a gevent worker the thread is a greenlet and
its socket and database waits yield, like the usage writer's.
"""

from __future__ import annotations

from flask import Flask

from portal.background import PassThread, wake_after_commit
from portal.mail.outbox import ENQUEUED
from portal.mail.sender import BATCH, send_due

EXTENSION = "portal.mail_sender"


class SenderThread(PassThread):
    def __init__(self, app: Flask, *, interval: float) -> None:
        super().__init__(app, name="mail-sender", interval=interval, work=lambda: send_due().attempted >= BATCH)


def install_session_hooks() -> None:
    """Once per interpreter: wake the sender after a commit that enqueued mail."""
    wake_after_commit(ENQUEUED, EXTENSION)
