"""Leaked keys: anyone holding a key may revoke it, and secret scanners report keys they find in public.

Both paths end here: the key is found by its keyed hash (the same lookup as a verification), then revoked or
only noted, with an audit event (no actor: nobody signed in did it) and a mail to the organization's owners,
all in one transaction. Whether a key exists is never told to the caller of the revocation API; a signed
secret-scanning report is told which tokens are ours, as the partner program expects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import joinedload

from portal import audit, mail, ratelimit
from portal.extensions import db
from portal.keys import format as keyformat
from portal.keys.services import pepper
from portal.models import ApiKey, Organization, User
from portal.models.organization import LEAK_ACTIONS
from portal.notify.events import member_addresses
from portal.timeutil import utcnow

REPORTED_LEAKED = "reported_leaked"  # the ``reason`` of the audit event
SOURCE_REVOCATION_API = "revocation_api"
SOURCE_SECRET_SCANNING = "secret_scanning"  # noqa: S105 - a source name, not a secret
SOURCE_LABELS: dict[str, str] = {
    SOURCE_REVOCATION_API: "the public key revocation API",
    SOURCE_SECRET_SCANNING: "GitHub secret scanning",
}
ACTOR_LABELS: dict[str, str] = {
    SOURCE_REVOCATION_API: "Leak report (anonymous)",
    SOURCE_SECRET_SCANNING: "GitHub secret scanning",
}
LEAK_ACTION_LABELS: dict[str, str] = {
    "notify": "Tell the owners by mail (the key keeps working until someone revokes it)",
    "revoke": "Revoke the key at once and tell the owners by mail",
}
# A string that could be a key someone copied, mistyped or truncated: answered like a real one. Anything else
# is not a key at all and is refused as bad input.
KEY_SHAPED = re.compile(r"\Apk_[0-9A-Za-z_]{1,120}\Z")
MAX_URL_CHARS = 500


def key_shaped(candidate: object) -> TypeGuard[str]:
    return isinstance(candidate, str) and KEY_SHAPED.match(candidate) is not None


def take_report_slot(ip: str | None, limit: int, window: timedelta) -> bool:
    """Count a revocation request from ``ip`` (committed at once, so parallel probes each count); False when
    the address has used up its window. A refused request is given back, as sign-in throttling does."""
    if not ip:
        return True
    bucket = f"leak-report:ip:{ip}"
    count, window_start = ratelimit.take(bucket, window)
    allowed = count <= limit
    if not allowed:
        ratelimit.give_back(bucket, window_start)
    db.session.commit()
    return allowed


def find_keys(candidates: Iterable[str]) -> dict[str, ApiKey]:
    """The stored keys among ``candidates``, by plaintext, locked for the change that follows.

    Only well-formed candidates (prefix, length, checksum) are hashed and looked up."""
    hashes = {keyformat.key_hash(c, pepper()): c for c in set(candidates) if keyformat.parse(c)}
    if not hashes:
        return {}
    rows = db.session.scalars(
        sa.select(ApiKey)
        .where(ApiKey.key_hash.in_(list(hashes)))
        .options(joinedload(ApiKey.organization))
        .order_by(ApiKey.id)
        .with_for_update(of=ApiKey)
        .execution_options(populate_existing=True)
    ).all()
    return {hashes[bytes(row.key_hash)]: row for row in rows}


def _clean_url(url: object) -> str | None:
    """A public URL from a report, kept only when it is a plain http(s) link of sane length."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or any(ord(c) < 32 for c in url):
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def handle_leak(
    api_key: ApiKey, *, revoke: bool, source: str, url: object, ip: str | None, now: datetime
) -> str | None:
    """Revoke (``revoke``) or note a key reported leaked, audit it and mail the owners; nothing is committed.

    Returns ``"revoked"`` or ``"notified"``, or None for a key that no longer works (revoked or expired):
    telling the owners again about a dead key would only be noise."""
    if api_key.status_at(now) not in ("active", "expiring"):
        return None
    org = api_key.organization
    public_url = _clean_url(url)
    details: dict[str, Any] = {
        "name": api_key.name,
        "hint": api_key.hint,
        "reason": REPORTED_LEAKED,
        "source": source,
        "url": public_url,
    }
    if revoke:
        api_key.revoked_at = now
        api_key.revoked_by_id = None
        action = "key.revoked"
    else:
        action = "key.leak_reported"
    audit.record(
        action,
        organization_id=org.id,
        actor=None,
        actor_label=ACTOR_LABELS[source],
        target_type="api_key",
        target_id=api_key.id,
        details=details,
        ip=ip,
    )
    for address in member_addresses(org):
        mail.enqueue(
            address,
            "key_reported_leaked",
            org=org,
            api_key=api_key,
            revoked=revoke,
            source_label=SOURCE_LABELS[source],
            public_url=public_url,
            reported_at=now.strftime("%Y-%m-%d %H:%M UTC"),
        )
    return "revoked" if revoke else "notified"


def revoke_reported(candidate: str, *, ip: str | None) -> None:
    """The public revocation API: whoever holds a key may revoke it. Says nothing about what it found."""
    now = utcnow()
    for api_key in find_keys([candidate]).values():
        handle_leak(api_key, revoke=True, source=SOURCE_REVOCATION_API, url=None, ip=ip, now=now)
    db.session.commit()


@dataclass(frozen=True)
class ReportedToken:
    """One entry of a secret-scanning report: the token found, its type, where, and in what kind of place."""

    token: str
    type: str
    url: str | None
    source: str | None


def process_scan_report(items: list[ReportedToken], *, ip: str | None) -> list[dict[str, str]]:
    """Label each reported token (``true_positive`` for a key of ours, live or revoked) and act on each key
    once, as its organization chose (``leak_action``)."""
    found = find_keys(item.token for item in items)
    now = utcnow()
    handled: set[Any] = set()
    answers = []
    for item in items:
        api_key = found.get(item.token)
        answers.append(
            {
                "token_raw": item.token,
                "token_type": item.type,
                "label": "true_positive" if api_key is not None else "false_positive",
            }
        )
        if api_key is not None and api_key.id not in handled:
            handled.add(api_key.id)
            revoke = api_key.organization.leak_action == "revoke"
            handle_leak(api_key, revoke=revoke, source=SOURCE_SECRET_SCANNING, url=item.url, ip=ip, now=now)
    db.session.commit()
    return answers


class LeakSettingError(Exception):
    """A leak-response setting that cannot be saved; the message is shown to the owner."""


def set_leak_action(org: Organization, action: str, actor: User, *, ip: str | None = None) -> bool:
    """Choose what a secret-scanning report does to this organization's keys; True when it changed."""
    if action not in LEAK_ACTIONS:
        raise LeakSettingError("Pick one of the listed actions.")
    old = org.leak_action
    if action == old:
        return False
    org.leak_action = action
    audit.record(
        "org.leak_action_changed",
        organization_id=org.id,
        actor=actor,
        target_type="organization",
        target_id=org.id,
        details={"from": old, "to": action},
        ip=ip,
    )
    db.session.commit()
    return True
