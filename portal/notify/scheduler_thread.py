"""The scheduler thread: one per web process, started at the process's first request, like the mail sender's.

Every ``NOTIFY_INTERVAL`` seconds each process asks for the interval's turn (:func:`scheduler.claim_turn`); the
first of all processes to ask runs the pass, so several workers on several servers run one pass per interval
between them. ``flask notify run`` from cron does the same pass where no web process runs one.
"""

from __future__ import annotations

import logging

from flask import Flask

from portal.extensions import db
from portal.mail.worker import SenderThread
from portal.notify import scheduler

log = logging.getLogger("portal.notify")
EXTENSION = "portal.notify_scheduler"


class SchedulerThread(SenderThread):
    thread_name = "notify-scheduler"

    def run_once(self) -> int:
        """One turn in its own app context: a pass if this process got the interval's turn."""
        with self.app.app_context():
            try:
                if scheduler.claim_turn(self.interval):
                    fired = scheduler.run_once()
                    if any(fired.values()):
                        log.info("scheduled events fired: %s", {k: v for k, v in fired.items() if v})
            except Exception:  # the database may be away; the next interval tries again
                log.exception("notification scheduler pass failed")
            finally:
                db.session.remove()
        return 0


def init_app(app: Flask) -> None:
    """Start the thread at each web process's first request (``NOTIFY_SCHEDULER_THREAD``); never in the CLI."""
    if app.config["NOTIFY_SCHEDULER_THREAD"]:
        thread = SchedulerThread(app, interval=float(app.config["NOTIFY_INTERVAL"]))
        app.extensions[EXTENSION] = thread
        app.before_request(thread.ensure_started)
