"""Reading what the real SMTP test server received: deliver the outbox, find a mail, follow its link."""

from __future__ import annotations

import re
from typing import Any

from portal import mail

LINK = re.compile(r"https?://[^/\s]+(/[^\s\"<>]+)")


def deliver(mail_server: Any) -> list[Any]:
    """Send every due mail over SMTP and return the messages that arrived with this call."""
    before = len(mail_server.received)
    mail.send_due()
    return list(mail_server.received[before:])


def only_mail_to(received: list[Any], address: str) -> Any:
    matching = [r for r in received if r.rcpt_tos == [address]]
    assert len(matching) == 1, [(r.rcpt_tos, r.message["Subject"]) for r in received]
    return matching[0]


def link_path(received: Any, prefix: str) -> str:
    """The path of the one link in the mail's text that starts with ``prefix`` (the same in its HTML part)."""
    paths = {p for p in LINK.findall(received.part("plain")) if p.startswith(prefix)}
    assert len(paths) == 1, paths
    path = paths.pop()
    if received.message.get_body(("html",)) is not None:
        assert path in received.part("html")
    return path
