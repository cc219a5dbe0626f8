"""The scheduler thread: one per web process, started at the process's first request, like the mail sender's.

Every ``NOTIFY_INTERVAL`` seconds each process asks for the interval's turn (:func:`scheduler.claim_turn`); the
first of all processes to ask runs the pass, so several workers on several servers run one pass per interval
between them. ``flask notify run`` from cron does the same pass where no web process runs one.
"""

from __future__ import annotations

import logging

from flask import Flask

from portal.background import PassThread
from portal.notify import scheduler

log = logging.getLogger("portal.notify")
EXTENSION = "portal.notify_scheduler"


class SchedulerThread(PassThread):
    def __init__(self, app: Flask, *, interval: float) -> None:
        super().__init__(app, name="notify-scheduler", interval=interval, work=self.turn)

    def turn(self) -> bool:
        """A pass if this process got the interval's turn; never another at once (the next interval's)."""
        if scheduler.claim_turn(self.interval):
            fired = scheduler.run_once()
            if any(fired.values()):
                log.info("scheduled events fired: %s", {k: v for k, v in fired.items() if v})
        return False


def init_app(app: Flask) -> None:
    """Start the thread at each web process's first request (``NOTIFY_SCHEDULER_THREAD``); never in the CLI."""
    if app.config["NOTIFY_SCHEDULER_THREAD"]:
        thread = SchedulerThread(app, interval=float(app.config["NOTIFY_INTERVAL"]))
        app.extensions[EXTENSION] = thread
        app.before_request(thread.ensure_started)
