"""The events the portal tells people about: defined once here, read by the settings page, the deliverer, the
scheduler, the OpenAPI document and the mail templates. Plain data, no Flask.

Organization events go to webhook endpoints that subscribe to them and are mailed to whom the organization's
settings say (``default_audience`` until an owner or admin chooses). Account security events (password, email
and two-factor changes) are mailed to the account's own owner only, always, by portal/auth and
portal/twofactor; they are listed here so the settings page can say so.
"""

from __future__ import annotations

from dataclasses import dataclass

PAYLOAD_VERSION = 1  # the ``version`` field of every payload; a breaking change to ``data`` increments it

# Who an organization event is mailed to. "admins" means owners and admins.
AUDIENCES: dict[str, str] = {
    "nobody": "Nobody",
    "owners": "Owners",
    "admins": "Owners and admins",
    "members": "All members",
}

ALL_EVENTS = "*"  # a webhook endpoint subscribed to every event, present and future
TEST_EVENT = "webhook.test"  # sent by "Send a test event"; never mailed, never in the organization's feed


@dataclass(frozen=True)
class EventType:
    name: str
    label: str  # how pages and mail subjects name it
    description: str  # when it fires, one sentence
    default_audience: str  # one of AUDIENCES
    scheduled: bool = False  # fired by the scheduler (portal/notify/scheduler.py), not by an action


EVENTS: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType("key.created", "Key created", "A member, the CLI or the API created a key.", "nobody"),
        EventType(
            "key.rolled", "Key rolled", "A key was rolled: a new key replaces it after a grace period.", "nobody"
        ),
        EventType(
            "key.revoked",
            "Key revoked",
            "A key was revoked, by a member or because it was reported leaked (the reason says which).",
            "owners",
        ),
        EventType(
            "key.leak_reported",
            "Key reported leaked",
            "A key was reported found in public; the organization chose to be told rather than have it revoked.",
            "nobody",
        ),
        EventType(
            "key.expiring",
            "Key expiring soon",
            "A key expires in 7 days, and again 1 day before.",
            "admins",
            scheduled=True,
        ),
        EventType("key.expired", "Key expired", "A key reached its expiry date and stopped working.", "admins", True),
        EventType(
            "key.idle",
            "Key idle",
            "A key has had no calls for the number of days the organization chose (off until chosen).",
            "admins",
            scheduled=True,
        ),
        EventType(
            "quota.threshold",
            "Quota threshold reached",
            "The organization used 80%, then 100%, of this month's quota.",
            "owners",
            scheduled=True,
        ),
        EventType(
            "ratelimit.exceeded",
            "Rate limit exceeded",
            "A call was refused for the rate limit (the first refusal of an hour).",
            "admins",
            scheduled=True,
        ),
        EventType("member.joined", "Member joined", "Someone accepted an invitation and joined.", "nobody"),
        EventType("member.removed", "Member removed", "A member was removed or left.", "owners"),
    )
}
EVENT_NAMES: tuple[str, ...] = tuple(EVENTS)

# Mailed to the account's owner whatever an organization chooses (templates/mail/*).
ACCOUNT_EVENTS: dict[str, str] = {
    "password.changed": "Your password was changed or reset",
    "email.changed": "Your email address was changed (mailed to the old address)",
    "twofactor.enabled": "Two-factor authentication was turned on",
    "twofactor.disabled": "Two-factor authentication was turned off",
    "key.reported_leaked": "A key of an organization you own was reported leaked (owners)",
}

# Days before expiry at which ``key.expiring`` fires; quota percentages at which ``quota.threshold`` fires.
EXPIRY_WARNINGS_DAYS: tuple[int, ...] = (7, 1)
QUOTA_THRESHOLDS: tuple[int, ...] = (80, 100)


def subscribed(events: list[str], event_type: str) -> bool:
    """True when an endpoint with this event list receives ``event_type``."""
    return ALL_EVENTS in events or event_type in events


class UnknownEvent(ValueError):
    """An event name that is not in the catalogue."""


def check_events(names: list[str]) -> list[str]:
    """Names as given, deduplicated in catalogue order; ``*`` alone stands for every event."""
    unknown = [n for n in names if n != ALL_EVENTS and n not in EVENTS]
    if unknown:
        raise UnknownEvent(f"Unknown event {unknown[0]!r}. Known events: {', '.join(EVENT_NAMES)}.")
    if not names or ALL_EVENTS in names:
        return [ALL_EVENTS]
    return [n for n in EVENT_NAMES if n in names]
