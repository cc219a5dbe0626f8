"""A real webhook receiver on loopback for the delivery tests: a threaded http.server recording what it gets.

``mode`` says how it answers: ``ok`` (204), ``error`` (500 with a body), ``hang`` (holds each request until
:meth:`Receiver.release`); ``refuse`` lists events answered 500 whatever the mode. :meth:`Receiver.down` and
:meth:`Receiver.up` close and reopen its port, to play a receiver that is away and comes back.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import standardwebhooks

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int  # which connection it came over

    def verify(self, secret: str) -> Any:
        """The payload, when the signature verifies with ``secret`` (else WebhookVerificationError)."""
        return standardwebhooks.Webhook(secret).verify(self.body, self.headers)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as most receivers speak
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with receiver.lock:
            receiver.arrived += 1
            mode = "error" if self.headers.get("webhook-id") in receiver.refuse else receiver.mode
        if mode == "hang":
            receiver.hanging.set()
            receiver.released.wait(60)
            mode = "ok"
        with receiver.lock:
            receiver.requests.append(Request(self.path, dict(self.headers), body, self.client_address[1]))
        if mode == "error":
            self._answer(500, b"receiver is broken: try again later")
        else:
            self._answer(204, b"")

    def _answer(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the deliverer gave up waiting and closed the connection
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class Receiver:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[Request] = []
        self.refuse: set[str] = set()  # webhook-ids answered 500 whatever the mode
        self.arrived = 0  # requests that reached the handler, answered or not (yet)
        self.lock = threading.Lock()
        self.hanging = threading.Event()
        self.released = threading.Event()
        self.port = _free_port()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks"

    def up(self) -> Receiver:
        server = _Server((HOST, self.port), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def release(self) -> None:
        self.released.set()

    def payloads(self, secret: str) -> list[Any]:
        return [r.verify(secret) for r in self.requests]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def receiving(mode: str = "ok") -> Iterator[Receiver]:
    receiver = Receiver(mode).up()
    try:
        yield receiver
    finally:
        receiver.release()
        receiver.down()
