"""How a message leaves: over SMTP (``MAIL_URL``), or printed to the terminal in development.

A transport raises :class:`DeliveryError` for a message the server would not take (that message is retried
later) and :class:`ConnectionFailure` when the server cannot be reached or logged into (the pass stops: every
other message would fail the same way). Error texts never hold the password: ``MAIL_URL`` is shown redacted.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import sys
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from portal.config import ConfigError

ERROR_LENGTH = 500  # mail_outbox.last_error
_TRUE = ("1", "true", "yes", "on")


class DeliveryError(Exception):
    """The server refused this message (4xx/5xx); another may still go through."""


class ConnectionFailure(DeliveryError):
    """The server cannot be reached, secured or logged into: no message can go through now."""


class Transport(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False  # smtps://
    starttls: bool = False
    timeout: float = 20.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 20.0) -> SmtpSettings:
        """``smtp://user:pass@host:587?starttls=1``, ``smtps://user:pass@host:465`` or ``smtp://host:25``."""
        parts = urlsplit(url)
        shown = redact_url(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ConfigError(f"MAIL_URL must start with smtp:// or smtps:// (got {shown})")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"MAIL_URL has an invalid port ({shown})") from None
        if not parts.hostname:
            raise ConfigError(f"MAIL_URL has no host ({shown})")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            timeout = float(query.get("timeout", timeout))
        except ValueError:
            raise ConfigError(f"MAIL_URL has an invalid timeout ({shown})") from None
        implicit = parts.scheme == "smtps"
        starttls = query.get("starttls", "").lower() in _TRUE
        if implicit and starttls:
            raise ConfigError(f"MAIL_URL: smtps:// is already encrypted, drop starttls ({shown})")
        return cls(
            host=parts.hostname,
            port=port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            implicit_tls=implicit,
            starttls=starttls,
            timeout=timeout,
        )

    def redact(self, text: str) -> str:
        """``text`` with the password blotted out, should a server or library have echoed it."""
        if self.password:
            text = text.replace(self.password, "***")
        return text


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def describe(exc: BaseException) -> str:
    """A short text for ``last_error``: the server's code and answer, or the connection problem."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        answers = [f"{code} {_text(msg)}" for code, msg in exc.recipients.values()]
        text = "; ".join(answers) or "recipient refused"
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"{exc.smtp_code} {_text(exc.smtp_error)}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return f"{text} ({type(exc).__name__})"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class SmtpTransport:
    """One SMTP connection, opened at the first message and reused for the rest of a pass."""

    def __init__(self, settings: SmtpSettings, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.tls_context = tls_context or ssl.create_default_context()
        self._smtp: smtplib.SMTP | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp: smtplib.SMTP | None = None
        try:
            if s.implicit_tls:
                smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self.tls_context)
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            smtp.ehlo()
            if s.starttls:
                smtp.starttls(context=self.tls_context)
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
            return smtp
        except (OSError, smtplib.SMTPException) as exc:
            if smtp is not None:
                _quietly_close(smtp)
            raise ConnectionFailure(s.redact(f"{self.where}: {describe(exc)}")) from None

    def send(self, message: EmailMessage) -> None:
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            self._smtp.send_message(message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise DeliveryError(self.settings.redact(describe(exc))) from None
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise ConnectionFailure(self.settings.redact(f"{self.where}: {describe(exc)}")) from None
        except Exception as exc:  # e.g. an address the server cannot take in ASCII; the session state is unknown
            self.close()
            raise DeliveryError(self.settings.redact(describe(exc))) from None

    def close(self) -> None:
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                _quietly_close(smtp)


def _quietly_close(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        smtp.close()


class ConsoleTransport:
    """Development without ``MAIL_URL``: each mail is printed (to, subject, text with its links)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def send(self, message: EmailMessage) -> None:
        body = message.get_body(("plain",))
        text = body.get_content() if isinstance(body, EmailMessage) else ""
        out = self.stream or sys.stdout
        rule = "-" * 72
        out.write(
            f"{rule}\nMail to {message['To']} (not sent: no MAIL_URL)\nSubject: {message['Subject']}\n\n"
            f"{text.rstrip()}\n{rule}\n"
        )
        out.flush()

    def close(self) -> None:
        return None
