"""The gunicorn workers the portal is served by (gunicorn.conf.py): gunicorn's own, plus a deadline for every
request to arrive.

gunicorn's ``timeout`` only restarts a worker that stops answering its master; a gevent worker waits for a
request body as long as the client takes. A client that sends its headers and then trickles, or stalls, its
body holds one of the worker's connections for good, and 2,000 of them took both workers. Here:

- **One deadline per request.** Its line, headers and body must all arrive within ``REQUEST_READ_TIMEOUT``
  (``GUNICORN_REQUEST_READ_TIMEOUT``, 10 s) of the moment the worker starts waiting for it: the connection
  opened, or the previous answer on it was sent. The wait for the headers is also capped at ``keepalive``
  (gunicorn's own limit, idle time included); a connection that misses it is closed. The body is read here,
  whole, before the app is called, through a socket whose every read may wait only until the deadline; a body
  that is late is answered 408 and its connection closed. So no code in the app (Flask's form parser, the
  /v1 fast path) ever waits on a client: ``wsgi.input`` is the body already received.
- **Room for new clients (gevent).** When a worker's connections near ``worker_connections``, the connection
  that has been waiting longest for (the rest of) its request is closed to make room, so a flood of slow
  clients cannot keep a new one out for a whole deadline. A request being answered is never closed.

A refused request is logged (gunicorn's error log) by its method, its path as :func:`portal.logs.redacted_path`
gives it (the routes' own words, every other segment ``…``, no query string: a path can carry a mailed one-time
token) and the client's address; gunicorn's own "Error handling request" line names it the same way.

A body larger than the app accepts (``MAX_CONTENT_LENGTH``) is not read here: the app refuses it from its
``Content-Length`` alone. gunicorn is still not meant to face the internet: a reverse proxy in front (the
compose file's nginx, docs/operations.md) buffers requests, limits connections per client address and answers
clients that read slowly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import gevent
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.errors import NoMoreData
from gunicorn.workers import ggevent, gthread

READ_TIMEOUT_VARIABLE = "GUNICORN_REQUEST_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 10.0
# The portal's own MAX_CONTENT_LENGTH (portal/config.py), should an app not set one.
DEFAULT_BODY_LIMIT = 2 * 1024 * 1024
READ_STEP = 64 * 1024


def read_timeout() -> float:
    """``GUNICORN_REQUEST_READ_TIMEOUT`` in seconds; a value that is not a positive number stops the server."""
    value = os.environ.get(READ_TIMEOUT_VARIABLE, "").strip() or str(DEFAULT_READ_TIMEOUT)
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{READ_TIMEOUT_VARIABLE} must be a positive number of seconds, not {value!r}")
    return seconds


def body_limit(wsgi: Any) -> int:
    """The largest body the app accepts: Flask's ``MAX_CONTENT_LENGTH``."""
    config = getattr(wsgi, "config", None) or {}
    return int(config.get("MAX_CONTENT_LENGTH") or DEFAULT_BODY_LIMIT)


class Refused(Exception):
    """A request the worker answers itself, without calling the app, before closing its connection."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def answer(self, path: str) -> bytes:
        """The whole HTTP answer: the JSON error body under /v1, a line of text elsewhere."""
        if path.startswith("/v1/"):
            from portal.errors import error_body  # here, not at import: the master loads this module

            body = json.dumps(error_body(self.code, self.message), separators=(",", ":")).encode()
            content_type = "application/json"
        else:
            body = f"{self.message}\n".encode()
            content_type = "text/plain; charset=utf-8"
        head = (
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body

    def send(self, sock: Any, path: str) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(self.answer(path))


def logged_path(req: Any, words: frozenset[str]) -> str:
    """gunicorn's ``req`` path for a log line: the routes' own words kept, every other segment ``…``."""
    from portal.logs import redacted_path  # here, not at import: the master loads this module

    return redacted_path(req.path or "", words)


def _unnamed(req: Any, words: frozenset[str]) -> None:
    """Before gunicorn's ``handle_error`` logs a request ("Error handling request GET /invite/<token>?…"): its
    path redacted, its query string gone. The request is over (its connection is closed after the error)."""
    if req is not None and hasattr(req, "uri"):
        req.uri = req.path = logged_path(req, words)
        req.query = req.fragment = ""


def untold(exc: BaseException) -> BaseException:
    """The same gunicorn parse error, without what the client sent: gunicorn quotes it ("Invalid HTTP request
    line: 'GET /password/reset/<token>…'", a header's value) in its warning line and in the 400 answer. Other
    errors are returned as they are."""
    kind = type(exc)
    if not kind.__module__.startswith("gunicorn.http."):
        return exc
    quiet_kind = type(kind.__name__, (kind,), {"__str__": lambda self: f"{kind.__name__} (not quoted)"})
    quiet: BaseException = BaseException.__new__(quiet_kind)
    quiet.__dict__.update(exc.__dict__)
    return quiet


def late(seconds: float) -> Refused:
    return Refused(408, "request_timeout", f"The request did not arrive within {seconds:g} seconds.")


class _UntilDeadline:
    """Stands in for the client socket while a body is read: each read may wait only until the deadline, so the
    body as a whole, however it is trickled, is late at the deadline."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        return self.sock.recv(size)  # type: ignore[no-any-return]


@contextlib.contextmanager
def _reads_until(req: Any, deadline: float) -> Iterator[None]:
    unreader = req.unreader  # what gunicorn's body readers read the socket through
    sock = unreader.sock
    prior = sock.gettimeout()
    unreader.sock = _UntilDeadline(sock, deadline)
    try:
        yield
    finally:
        unreader.sock = sock
        with contextlib.suppress(OSError):
            sock.settimeout(prior)


def receive_body(req: Any, sock: Any, deadline: float, limit: int) -> None:
    """Read the body of gunicorn's ``req`` now, all of it by ``deadline`` (``time.monotonic()``), and give the app
    that copy. Raises ``TimeoutError`` (late), :class:`Refused` (413: a chunked body over ``limit``) or
    ``NoMoreData`` (the client closed, or was closed, before its body was complete)."""
    reader = req.body.reader
    if isinstance(reader, LengthReader):
        if reader.length == 0 or reader.length > limit:
            return  # nothing to wait for, or more than the app accepts: it refuses from Content-Length alone
        most = reader.length
    elif isinstance(reader, ChunkedReader):
        most = limit + 1
    else:
        return
    if getattr(req, "_expected_100_continue", False):  # gunicorn sends it when it builds the environ: too late
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        req._expected_100_continue = False
    chunks: list[bytes] = []
    received = 0
    with _reads_until(req, deadline):
        while received < most:
            data = req.body.read(min(READ_STEP, most - received))
            if not data:
                break
            chunks.append(data)
            received += len(data)
    if isinstance(reader, LengthReader) and received < most:
        raise NoMoreData(b"")
    if received > limit:
        raise Refused(413, "body_too_large", f"The request body must be at most {limit} bytes.")
    req.body = Body(io.BytesIO(b"".join(chunks)))


@dataclass
class _Connection:
    sock: Any
    since: float  # when the worker started waiting for its current request
    closing: bool = False  # closed to make room; its read ends


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker with a deadline per request, and room kept for new connections."""

    def load_wsgi(self) -> None:
        from portal.logs import route_words  # here, not at import: the master loads this module

        super().load_wsgi()
        self.read_timeout = read_timeout()
        self.body_limit = body_limit(self.wsgi)
        self.route_words = route_words(self.wsgi)
        # A new connection is let in by closing the longest-waiting one once fewer slots than this are free.
        self.reserve = max(1, self.worker_connections // 20)
        self.connections: dict[Any, _Connection] = {}  # every open connection, by the greenlet serving it
        self.waiting: dict[Any, _Connection] = {}  # those waiting for (the rest of) a request, longest first
        self.closing = 0

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        me = gevent.getcurrent()
        connection = self.connections[me] = _Connection(client, time.monotonic())
        self._make_room()
        self.waiting[me] = connection
        try:
            super().handle(listener, client, addr)
        finally:
            del self.connections[me]
            self.waiting.pop(me, None)
            self.closing -= connection.closing

    def timeout_ctx(self) -> gevent.Timeout:
        """gunicorn waits for each request's line and headers inside this: the deadline starts here."""
        me = gevent.getcurrent()
        connection = self.connections.get(me)
        if connection is not None:
            connection.since = time.monotonic()
            self.waiting.pop(me, None)
            if not connection.closing:  # already closed once (a request that had arrived was still answered)
                self.waiting[me] = connection  # now the most recent to wait
        return gevent.Timeout(min(self.cfg.keepalive, self.read_timeout), False)  # False: time up ends quietly

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        me = gevent.getcurrent()
        connection = self.connections.get(me)
        since = connection.since if connection is not None else time.monotonic()
        try:
            receive_body(req, sock, since + self.read_timeout, self.body_limit)
        except NoMoreData:
            if connection is None or not connection.closing:
                raise  # the client went away: gunicorn closes quietly
            self._refuse(late(self.read_timeout), req, sock, addr, "closed to make room for new connections")
        except TimeoutError:
            self._refuse(late(self.read_timeout), req, sock, addr)
        except Refused as refusal:
            self._refuse(refusal, req, sock, addr)
        finally:
            self.waiting.pop(me, None)
        return super().handle_request(listener_name, req, sock, addr)  # type: ignore[no-any-return]

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Any) -> None:
        _unnamed(req, self.route_words)
        super().handle_error(req, client, addr, untold(exc))

    def _refuse(self, refusal: Refused, req: Any, sock: Any, addr: Any, why: str = "") -> None:
        refusal.send(sock, req.path or "")  # the path only chooses the answer's shape (JSON under /v1)
        path = logged_path(req, self.route_words)
        self.log.info("%s %s from %s: %s %s", req.method, path, addr, refusal.status, why or refusal.message)
        raise StopIteration  # gunicorn closes the connection

    def _make_room(self) -> None:
        """Close the longest-waiting connections until ``reserve`` slots are free (or none is waiting): shutting
        down their reading side ends the read they wait in as if the client had stopped sending, and their
        greenlet answers 408 (a body was on its way) or just closes them."""
        while self.waiting and len(self.connections) - self.closing > self.worker_connections - self.reserve:
            greenlet = next(iter(self.waiting))
            connection = self.waiting.pop(greenlet)
            connection.closing = True
            self.closing += 1
            with (
                contextlib.suppress(OSError),
                socket.fromfd(connection.sock.fileno(), connection.sock.family, socket.SOCK_STREAM) as dup,
            ):
                # Through a duplicate: gevent's own shutdown() would fail the pending read with EBADF instead.
                dup.shutdown(socket.SHUT_RD)


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker with a deadline for each request's body (from the moment its headers are read;
    gunicorn waits up to 5 s for a request's first bytes outside its threads)."""

    def load_wsgi(self) -> None:
        from portal.logs import route_words  # here, not at import: the master loads this module

        super().load_wsgi()
        self.read_timeout = read_timeout()
        self.body_limit = body_limit(self.wsgi)
        self.route_words = route_words(self.wsgi)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Any) -> None:
        _unnamed(req, self.route_words)
        super().handle_error(req, client, addr, untold(exc))

    def handle_request(self, req: Any, conn: Any) -> bool:
        try:
            try:
                receive_body(req, conn.sock, time.monotonic() + self.read_timeout, self.body_limit)
            except TimeoutError:
                raise late(self.read_timeout) from None
        except Refused as refusal:
            refusal.send(conn.sock, req.path or "")  # the path only chooses the answer's shape (JSON under /v1)
            path = logged_path(req, self.route_words)
            self.log.info("%s %s from %s: %s %s", req.method, path, conn.client, refusal.status, refusal.message)
            return False  # gunicorn closes the connection
        return super().handle_request(req, conn)  # type: ignore[no-any-return]
