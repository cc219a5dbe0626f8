"""Background passes in each web process: the mail sender and the webhook deliverer.

A :class:`PassThread` is started at the process's first request (after a fork, afresh) and runs its pass every
``interval`` seconds, and at once when a commit flagged work for it: the code that adds the work sets a flag in
``db.session.info`` and :func:`wake_after_commit` wakes the thread once the transaction is kept. Under a gevent
worker the thread is a greenlet and its socket and database waits yield (portal/green.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import event

from portal.extensions import PortalSession, db

log = logging.getLogger("portal")


class PassThread:
    """Runs ``work()`` in an app context of its own; ``work`` returns True when more may be due at once."""

    def __init__(self, app: Flask, *, name: str, interval: float, work: Callable[[], bool]) -> None:
        self.app = app
        self.name = name
        self.interval = interval
        self.work = work
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
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.run_once():
                self._wake.set()  # a full pass: more may be due

    def run_once(self) -> bool:
        """One pass in its own app context; whether another should follow at once."""
        with self.app.app_context():
            try:
                return self.work()
            except Exception:  # the database may be away; the next pass tries again
                log.exception("%s pass failed", self.name)
                return False
            finally:
                db.session.remove()


_WAKERS: dict[str, str] = {}  # db.session.info flag -> app.extensions name of the PassThread it wakes


def _after_commit(session: Any) -> None:
    for flag, extension in _WAKERS.items():
        if session.info.pop(flag, False) and has_app_context():
            thread = current_app.extensions.get(extension)
            if thread is not None:
                thread.wake()


def _after_rollback(session: Any) -> None:
    for flag in _WAKERS:
        session.info.pop(flag, None)


def wake_after_commit(flag: str, extension: str) -> None:
    """Wake ``app.extensions[extension]`` after a commit whose session set ``session.info[flag]``."""
    _WAKERS[flag] = extension
    if not event.contains(PortalSession, "after_commit", _after_commit):
        event.listen(PortalSession, "after_commit", _after_commit)
        event.listen(PortalSession, "after_rollback", _after_rollback)
