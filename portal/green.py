"""Serving under gevent (the default gunicorn worker, see gunicorn.conf.py) without stalling the event loop.

A gevent worker answers all of its connections from one OS thread, switching between them whenever one waits
for I/O. Two things in the portal would wait without switching, and stop every connection of the worker:

- psycopg2 is a C extension that monkey-patching cannot reach. It offers a documented hook instead, a *wait
  callback*: with one set, each query is sent asynchronously and waits for its socket through gevent's hub.
- argon2id hashing is tens of milliseconds of CPU by design. It runs in gevent's thread pool, where
  argon2-cffi releases the GIL, so the worker keeps answering meanwhile.

Outside gevent (tests, ``flask run``, gthread workers) nothing here changes anything.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def active() -> bool:
    """Whether this process runs under gevent with its sockets monkey-patched."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _connect_deadline(conn: Any) -> float | None:
    """When the connection being set up must be given up (``connect_timeout``), else None (queries wait freely).

    libpq enforces ``connect_timeout`` only in its blocking connect; on a cooperative connection the caller
    has to, or a database host that accepts TCP but never answers (a hung server, a black-holing firewall)
    would hold the connecting greenlet, and every verification queued behind it, until TCP gave up. The
    deadline covers the whole handshake, as libpq's does, not each wait of it. (A URL listing several hosts
    gives up at the first that times out, where blocking libpq would try the next.)
    """
    from psycopg2 import OperationalError, extensions

    if conn.status in (extensions.STATUS_READY, extensions.STATUS_BEGIN, extensions.STATUS_PREPARED):
        return None
    raw = conn.get_dsn_parameters().get("connect_timeout") or "0"
    try:
        seconds = int(raw)
    except ValueError:  # what blocking libpq says of it
        raise OperationalError(f'invalid integer value "{raw}" for connection option "connect_timeout"') from None
    return time.monotonic() + max(seconds, 2) if seconds > 0 else None  # libpq's own floor is 2 s


def _wait_for_socket(conn: Any) -> None:
    """psycopg2's wait callback: drive the asynchronous query, yielding to gevent while the socket is busy."""
    import gevent.socket
    from psycopg2 import OperationalError, extensions

    deadline = _connect_deadline(conn)
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if state == extensions.POLL_READ:
                gevent.socket.wait_read(conn.fileno(), timeout=timeout)
            elif state == extensions.POLL_WRITE:
                gevent.socket.wait_write(conn.fileno(), timeout=timeout)
            else:
                raise OperationalError(f"unexpected poll state from psycopg2: {state!r}")
        except TimeoutError:
            if deadline is None or time.monotonic() < deadline:
                raise  # not this wait's own timeout: a caller's deadline, say
            raise OperationalError("timeout expired: the database did not answer in time while connecting") from None


class DeadlineExceeded(TimeoutError):
    """A block run under :func:`deadline` took too long."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Under gevent, raise :class:`DeadlineExceeded` in the block once it has run ``seconds``, interrupting the
    socket wait it is in (a query to a server that stopped answering); elsewhere, nothing."""
    if not active():
        yield
        return
    import gevent

    with gevent.Timeout(seconds, DeadlineExceeded):
        yield


def init_psycopg2() -> bool:
    """Under gevent, make every psycopg2 connection of this process cooperative; returns whether it did.

    Green connections cannot run ``COPY`` (psycopg2 refuses it with a wait callback), which is why the usage
    writer sends its batches as one ``INSERT … SELECT FROM unnest(…)`` instead.
    """
    if not active():
        return False
    from psycopg2 import extensions

    if extensions.get_wait_callback() is None:
        extensions.set_wait_callback(_wait_for_socket)
    return True


def offload(function: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy ``function(*args)`` in gevent's thread pool under gevent; directly otherwise."""
    if not active():
        return function(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(function, args)  # type: ignore[no-any-return]
