"""The sender thread: one per web process, started at the process's first request (after a fork, afresh).

It runs a pass every ``MAIL_POLL_INTERVAL`` seconds, and at once when a commit added mail: ``enqueue()`` marks
the session and the ``after_commit`` hook below wakes the thread. Under a gevent worker the thread is a
greenlet and its socket and database waits yield, like the usage writer's.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import event

from portal.extensions import PortalSession, db
from portal.mail.outbox import ENQUEUED
from portal.mail.sender import BATCH, send_due

log = logging.getLogger("portal.mail")
EXTENSION = "portal.mail_sender"


class SenderThread:
    """A daemon thread per process that calls :meth:`run_once` every ``interval`` seconds (and when woken).

    The notification scheduler's thread (portal/notify/scheduler_thread.py) is one too, with its own pass."""

    thread_name = "mail-sender"

    def __init__(self, app: Flask, *, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # After a fork the parent's thread is not ours: start afresh.
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.run_once() >= BATCH:
                self._wake.set()  # a full pass: more may be due

    def run_once(self) -> int:
        """One pass in its own app context; returns how many mails it tried."""
        with self.app.app_context():
            try:
                return send_due().attempted
            except Exception:  # the database may be away; the next pass tries again
                log.exception("mail sender pass failed")
                return 0
            finally:
                db.session.remove()


def _after_commit(session: Any) -> None:
    if session.info.pop(ENQUEUED, False) and has_app_context():
        sender = current_app.extensions.get(EXTENSION)
        if sender is not None:
            sender.wake()


def _after_rollback(session: Any) -> None:
    session.info.pop(ENQUEUED, None)


def install_session_hooks() -> None:
    """Once per interpreter: wake the sender after a commit that enqueued mail."""
    if not event.contains(PortalSession, "after_commit", _after_commit):
        event.listen(PortalSession, "after_commit", _after_commit)
        event.listen(PortalSession, "after_rollback", _after_rollback)
