"""A verification's waits on PostgreSQL end at its deadline: the options of the connection it opens, and, outside
gevent, a watchdog that ends a statement the database does not answer in time.

Under gevent (the shipped worker) :func:`portal.green.deadline` interrupts the wait itself. A thread waiting in
libpq (gthread workers, ``flask run``, tests) cannot be interrupted, and a frozen server's host still
acknowledges every packet, so neither TCP nor ``statement_timeout`` (the server's own clock) ever ends the wait.
The watchdog shuts the connection's socket down at the deadline instead: libpq's wait ends with an error, as it
would for a vanished server, and the call answers 503.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Mapping

# How often the watchdog looks at the statements in flight: a statement is ended at most this late.
WATCH_TICK = 0.05
LIBPQ_MIN_CONNECT_TIMEOUT = 2  # libpq counts whole seconds and takes 1 as 2


def connect_options(configured: Mapping[str, str], remaining: float, deadline: float) -> dict[str, str]:
    """libpq options for a verification connection opened with ``remaining`` seconds left of a ``deadline``-second
    budget: the URL's own values (``configured``) where they are shorter.

    ``connect_timeout`` is the time left (libpq rounds it up to whole seconds, 2 at least; under gevent the call's
    own deadline cuts it exactly). ``tcp_user_timeout`` and the keepalives are the budget: a connection whose
    sent data goes unacknowledged that long, or whose idle server stops answering probes, is dead to a caller
    that waits no longer than that anyway.
    """
    budget = max(1, math.ceil(deadline))
    wanted = {
        "connect_timeout": max(LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(remaining)),
        "tcp_user_timeout": budget * 1000,
        "keepalives_idle": budget,
        "keepalives_interval": max(1, budget // 3),
        "keepalives_count": 3,
    }
    given = {name: _positive(configured.get(name)) for name in wanted}
    given["connect_timeout"] = given["connect_timeout"] or _positive(os.environ.get("PGCONNECT_TIMEOUT"))
    options = {name: str(min(value, given[name] or value)) for name, value in wanted.items()}
    options["keepalives"] = "1"
    return options


def _positive(text: str | None) -> int | None:
    try:
        value = int(text) if text else 0
    except ValueError:
        return None
    return value if value > 0 else None


class Watched:
    """A connection the watchdog looks after: its socket, and the deadline of the statement in flight (``None``:
    none). Setting and clearing the deadline around a statement are two attribute writes, nothing more."""

    __slots__ = ("deadline", "fileno")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.fileno = -1


class Watchdog:
    """Ends statements that outlive their deadline, for every backend of the process: one thread, started with the
    first connection it watches, that looks every :data:`WATCH_TICK` seconds.

    A socket is shut down under the same lock that :meth:`unwatch` takes, and a connection is unwatched before it
    is closed, so a descriptor closed and reused by someone else is never touched. A statement that ends just as
    the watchdog looks may lose its connection anyway: the next statement then runs on a fresh one.
    """

    def __init__(self, tick: float = WATCH_TICK) -> None:
        self.tick = tick
        self._lock = threading.Lock()
        self._watched: set[Watched] = set()
        self._thread: threading.Thread | None = None
        self.ended = 0  # statements ended at their deadline (observability and tests)

    def watch(self, watched: Watched, fileno: int) -> None:
        with self._lock:
            watched.fileno, watched.deadline = fileno, None
            self._watched.add(watched)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="verification-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, watched: Watched) -> None:
        with self._lock:
            self._watched.discard(watched)
            watched.fileno, watched.deadline = -1, None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._watched = set()
        self._thread = None

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self._lock:
                for watched in self._watched:
                    deadline = watched.deadline
                    if deadline is not None and deadline <= now:
                        watched.deadline = None
                        _shut_down(watched.fileno)
                        self.ended += 1


def _shut_down(fileno: int) -> None:
    """Shut the socket behind ``fileno`` down for both directions, leaving the descriptor to its owner."""
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._after_fork)
