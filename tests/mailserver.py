"""A real SMTP server on loopback for the mail tests: aiosmtpd, collecting what it receives.

``MailServer`` can refuse the next messages (``refuse``), slow down (``delay``), ask for a login, and speak
STARTTLS with a self-signed certificate. It can be stopped and started again on the same port, to play a
server that is down and comes back.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        body = self.message.get_body((subtype,))
        assert isinstance(body, EmailMessage), f"no text/{subtype} part"
        return str(body.get_content())


class Handler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refuse = 0  # refuse this many messages with a 550
        self.delay = 0.0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            if self.refuse:
                self.refuse -= 1
                return "550 5.7.1 Message refused by the test server"
            message = BytesParser(policy=policy.default).parsebytes(envelope.content)
            assert isinstance(message, EmailMessage)
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 Accepted"


class MailServer:
    def __init__(
        self,
        port: int | None = None,
        *,
        login: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port or free_port()
        self.handler = Handler()
        self.login = login
        self.tls_context = tls_context
        self._controller: Controller | None = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def url(self, userinfo: str = "", query: str = "") -> str:
        return f"smtp://{userinfo + '@' if userinfo else ''}{HOST}:{self.port}{'?' + query if query else ''}"

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (
            self.login is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == self.login
        )
        return AuthResult(success=ok, handled=False)

    def start(self) -> MailServer:
        kwargs: dict[str, Any] = {}
        if self.login:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.tls_context is not None)
        if self.tls_context:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        self._controller = Controller(self.handler, hostname=HOST, port=self.port, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def self_signed_certificate(directory: Path) -> Path | None:
    """A certificate and key for 127.0.0.1 in one PEM file, made with the openssl tool (None without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    pem, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(  # noqa: S603 - fixed arguments
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(pem),
        ],
        check=True,
        capture_output=True,
    )
    return pem


def running(app: Any, server: MailServer) -> Iterator[MailServer]:
    """Start ``server`` and point the app's MAIL_URL at it for one test."""
    saved = app.config["MAIL_URL"]
    server.start()
    app.config["MAIL_URL"] = server.url()
    try:
        yield server
    finally:
        app.config["MAIL_URL"] = saved
        server.stop()
