"""Posting a webhook: to the address that was checked, within one deadline, following no redirect.

The host name is resolved and every address it gives checked (portal/notify/destinations.py) at each new
connection, and the socket connects to that checked address while the request keeps the URL's ``Host`` and TLS
verifies the certificate for the host name (SNI): a name re-pointed at an internal address between the check and
the connection (DNS rebinding) gets nowhere. One :class:`EndpointClient` serves one endpoint's deliveries of a
pass in turn over a kept-alive connection. ``WEBHOOK_TIMEOUT`` bounds each attempt, connection included.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from portal import green
from portal.notify.destinations import DestinationError, check_url, resolve

EXCERPT_CHARS = 1000  # of the response body, kept in the delivery log
_READ_BYTES = 4 * EXCERPT_CHARS  # UTF-8: enough bytes for 1,000 characters; the rest is never read
ERROR_CHARS = 500  # webhook_attempts.error


@dataclass(frozen=True)
class Answer:
    """One attempt as the delivery log shows it."""

    status_code: int | None
    duration_ms: int
    error: str | None = None
    excerpt: str | None = None
    # The endpoint itself cannot be reached now (refused destination, no connection, timeout): its other
    # deliveries of this pass would fail the same way.
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left


class _PinnedHTTP(http.client.HTTPConnection):
    """Plain http (``WEBHOOK_ALLOW_PRIVATE`` only) to one checked address, ``Host`` from the URL."""

    def __init__(self, host: str, port: int, *, family: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.family, self.address = family, address

    def connect(self) -> None:
        self.sock = _connect(self.family, self.address, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """https to one checked address; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, port: int, *, family: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=_tls_context())
        self.family, self.address = family, address

    def connect(self) -> None:
        sock = _connect(self.family, self.address, self.port, self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        except BaseException:
            sock.close()
            raise


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()  # verifies the chain and the host name
    return _TLS


def _connect(family: int, address: str, port: int, timeout: float | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class EndpointClient:
    """Posts bodies to one endpoint URL; keeps the connection between attempts while the receiver allows."""

    def __init__(self, url: str, *, timeout: float, allow_private: bool) -> None:
        self.url = url
        self.timeout = timeout
        self.allow_private = allow_private
        self._conn: http.client.HTTPConnection | None = None

    def post(self, data: bytes, headers: dict[str, str]) -> Answer:
        started = time.monotonic()
        deadline = _Deadline(self.timeout)
        try:
            with green.deadline(self.timeout):  # under gevent: a hard stop, whatever the receiver trickles
                status, excerpt = self._exchange(data, headers, deadline)
        except DestinationError as exc:
            self.close()
            return Answer(None, _ms(started), _cut(f"Not sent: {exc}"), unreachable=True)
        except TimeoutError:
            self.close()
            return Answer(None, _ms(started), f"No answer within {self.timeout:g} s (timed out)", unreachable=True)
        except ssl.SSLError as exc:  # a certificate the host name does not match, an unknown issuer …
            self.close()
            return Answer(None, _ms(started), _cut(f"TLS failed: {exc.reason or exc}"), unreachable=True)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(None, _ms(started), _cut(f"Connection failed: {_describe(exc)}"), unreachable=True)
        error = None
        if not 200 <= status < 300:
            error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        return Answer(status, _ms(started), error, excerpt)

    def _exchange(self, data: bytes, headers: dict[str, str], deadline: _Deadline) -> tuple[int, str]:
        reused = self._conn is not None
        conn = self._conn or self._open(deadline)
        self._conn = None
        sock = conn.sock
        assert sock is not None  # noqa: S101 -- connected above or kept alive
        try:
            sock.settimeout(deadline.left())
            conn.request("POST", _target(self.url), body=data, headers=headers)
            sock.settimeout(deadline.left())
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            conn.close()
            if not reused:
                raise
            # The receiver closed the kept-alive connection between attempts: once more on a new one.
            return self._exchange(data, headers, deadline)
        except BaseException:
            conn.close()
            raise
        try:
            excerpt = _excerpt(response, sock, deadline)
        except BaseException:
            conn.close()
            raise
        if response.will_close or not (response.isclosed() or response.length == 0):
            conn.close()  # the receiver closes it, or sent more than we read
        else:
            response.close()  # read to its end: the connection is ready for the lane's next delivery
            self._conn = conn
        return response.status, excerpt

    def _open(self, deadline: _Deadline) -> http.client.HTTPConnection:
        url = check_url(self.url, allow_private=self.allow_private)  # again: the setting may have changed
        parts = urlsplit(url)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        kind = _PinnedHTTPS if https else _PinnedHTTP
        failure: OSError | None = None
        for family, address in resolve(host, port, allow_private=self.allow_private):
            conn = kind(host, port, family=family, address=address, timeout=deadline.left())
            try:
                conn.connect()
                return conn
            except TimeoutError:
                conn.close()
                raise
            except ssl.SSLError:
                conn.close()
                raise
            except OSError as exc:  # refused or unreachable: the name's next address, if any
                conn.close()
                failure = exc
        assert failure is not None  # noqa: S101 -- resolve() returns at least one address
        raise failure

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def _excerpt(response: http.client.HTTPResponse, sock: socket.socket, deadline: _Deadline) -> str:
    """The start of the body: what a receiver says when it refuses is usually in its first lines."""
    chunks: list[bytes] = []
    size = 0
    while size < _READ_BYTES:
        sock.settimeout(deadline.left())
        chunk = response.read1(_READ_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\x00", "")
    return text[:EXCERPT_CHARS]


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _cut(text: str) -> str:
    return text[:ERROR_CHARS]


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
