"""One sentence per event, from its payload: the mail's body, the organization's feed and the bell.

Plain functions over the payload dict (the same JSON a webhook receives), so what a person reads and what a
receiver gets cannot drift apart. The ``data`` of each event type:

- ``key.*``: ``key`` {id, name, hint, environment, expires_at}; ``actor`` (who did it, when someone did);
  ``key.revoked`` adds ``reason`` (``revoked`` or ``reported_leaked``); ``key.rolled`` adds ``new_key`` and
  ``old_key_stops_at``; ``key.expiring`` adds ``days`` (7 or 1); ``key.idle`` adds ``idle_days`` and
  ``last_used_at`` (None: never used).
- ``quota.threshold``: ``percent`` (80 or 100), ``used``, ``quota``, ``month`` (YYYY-MM), ``hard`` (calls stop).
- ``ratelimit.exceeded``: ``hour`` (ISO start of the hour), ``refused`` (refusals counted so far that hour).
- ``member.*``: ``member`` {user_id, email, name, role}; ``actor``; ``member.removed`` may add ``reason``.
"""

from __future__ import annotations

from typing import Any

from portal.notify.catalogue import EVENTS


def _key(data: dict[str, Any], field: str = "key") -> str:
    key = data.get(field) or {}
    return f"the {key.get('environment', '')} key “{key.get('name', '?')}” ({key.get('hint', '')})".replace("  ", " ")


def _upper(text: str) -> str:
    """The first letter upper case, the rest as it was (``str.capitalize`` would lower a key's name and hint)."""
    return text[:1].upper() + text[1:]


def _by(data: dict[str, Any]) -> str:
    return f" by {data['actor']}" if data.get("actor") else ""


def describe(payload: dict[str, Any]) -> str:
    """What happened, in one sentence a member can act on."""
    kind = payload.get("type", "")
    data = payload.get("data") or {}
    if kind == "key.created":
        return f"{_upper(_key(data))} was created{_by(data)}."
    if kind == "key.rolled":
        return (
            f"{_upper(_key(data))} was rolled{_by(data)}; it stops working at {data.get('old_key_stops_at')}, "
            f"replaced by {(data.get('new_key') or {}).get('hint', 'a new key')}."
        )
    if kind == "key.revoked":
        why = " after it was reported leaked" if data.get("reason") == "reported_leaked" else ""
        return f"{_upper(_key(data))} was revoked{_by(data)}{why}; calls with it now fail."
    if kind == "key.leak_reported":
        return f"{_upper(_key(data))} was reported found in public. It still works: roll or revoke it."
    if kind == "key.expiring":
        days = data.get("days")
        when = "tomorrow" if days == 1 else f"in {days} days"
        return f"{_upper(_key(data))} expires {when} ({(data.get('key') or {}).get('expires_at')})."
    if kind == "key.expired":
        return f"{_upper(_key(data))} expired; calls with it now fail."
    if kind == "key.idle":
        last = data.get("last_used_at") or "never"
        return f"{_upper(_key(data))} has had no calls for {data.get('idle_days')} days (last used: {last})."
    if kind == "quota.threshold":
        stop = (
            " Further calls are refused until the month ends."
            if data.get("hard") and data.get("percent") == 100
            else ""
        )
        return (
            f"{data.get('percent')}% of the monthly quota is used: {data.get('used'):,} of {data.get('quota'):,} calls "
            f"in {data.get('month')}.{stop}"
        )
    if kind == "ratelimit.exceeded":
        return f"Calls were refused for the rate limit in the hour from {data.get('hour')}."
    if kind == "member.joined":
        member = data.get("member") or {}
        return f"{member.get('name')} <{member.get('email')}> joined as {member.get('role')}."
    if kind == "member.removed":
        member = data.get("member") or {}
        return f"{member.get('name')} <{member.get('email')}> was removed{_by(data)}."
    event = EVENTS.get(kind)
    return event.label if event else kind
