"""The ``webhooks`` section of the OpenAPI document: one entry per event of the catalogue, and the test event.

Each entry is the POST a subscribed endpoint receives: the versioned envelope of ``events.payload_for`` with
that event's ``data`` (described in portal/notify/wording.py), signed per the Standard Webhooks specification.
The examples are built by the same functions that build real payloads (``payload_for``, ``key_data``), so they
cannot drift from what is sent; tests check every example, and real events, against these schemas.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from portal.api.openapi_components import ref
from portal.models import ApiKey, Organization
from portal.notify.catalogue import EVENTS, EXPIRY_WARNINGS_DAYS, PAYLOAD_VERSION, QUOTA_THRESHOLDS, TEST_EVENT
from portal.notify.events import key_data, payload_for
from portal.roles import ROLES

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": list(required), "properties": properties}
    if description:
        schema["description"] = description
    return schema


def schema_name(event_type: str, suffix: str = "Event") -> str:
    """``key.created`` → ``KeyCreatedEvent`` (the envelope) or ``KeyCreatedData`` (its ``data``)."""
    return "".join(part.capitalize() for part in event_type.replace("_", ".").split(".")) + suffix


TIMESTAMP = {"type": "string", "format": "date-time"}
ACTOR = {
    "type": "string",
    "description": 'Who did it: "Name <address>" for a member, or "CLI", "system", "GitHub secret scanning" …',
}
LEAK_SOURCE = {
    "type": ["string", "null"],
    "enum": ["revocation_api", "secret_scanning", None],
    "description": "Where the leak report came from (`reason: reported_leaked` only).",
}

_DATA: dict[str, dict[str, Any]] = {
    "key.created": _object({"key": ref("WebhookKey"), "actor": ACTOR}, ("key", "actor")),
    "key.rolled": _object(
        {
            "key": ref("WebhookKey"),
            "actor": ACTOR,
            "new_key": {"oneOf": [ref("WebhookKey"), {"type": "null"}], "description": "The key that replaces it."},
            "old_key_stops_at": {**_nullable(TIMESTAMP), "description": "When the rolled key stops working."},
        },
        ("key", "actor", "new_key", "old_key_stops_at"),
    ),
    "key.revoked": _object(
        {
            "key": ref("WebhookKey"),
            "actor": ACTOR,
            "reason": {"type": "string", "enum": ["revoked", "reported_leaked"]},
            "source": LEAK_SOURCE,
        },
        ("key", "actor", "reason"),
    ),
    "key.leak_reported": _object(
        {"key": ref("WebhookKey"), "actor": ACTOR, "source": LEAK_SOURCE}, ("key", "actor", "source")
    ),
    "key.expiring": _object(
        {"key": ref("WebhookKey"), "days": {"type": "integer", "enum": list(EXPIRY_WARNINGS_DAYS)}},
        ("key", "days"),
        "Sent once per key and warning: `days` before `key.expires_at`.",
    ),
    "key.expired": _object({"key": ref("WebhookKey")}, ("key",)),
    "key.idle": _object(
        {
            "key": ref("WebhookKey"),
            "idle_days": {"type": "integer", "minimum": 1},
            "last_used_at": {**_nullable(TIMESTAMP), "description": "Null: never used."},
        },
        ("key", "idle_days", "last_used_at"),
    ),
    "quota.threshold": _object(
        {
            "percent": {"type": "integer", "enum": list(QUOTA_THRESHOLDS)},
            "used": {"type": "integer", "minimum": 0, "description": "Successful calls this month."},
            "quota": {"type": "integer", "minimum": 0, "description": "The month's quota."},
            "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "description": "The UTC month."},
            "hard": {"type": "boolean", "description": "True: calls are refused once the quota is used up."},
        },
        ("percent", "used", "quota", "month", "hard"),
        "Sent once per threshold and month.",
    ),
    "ratelimit.exceeded": _object(
        {
            "hour": {**TIMESTAMP, "description": "The start of the hour (UTC)."},
            "refused": {"type": "integer", "minimum": 1, "description": "Calls refused so far in that hour."},
        },
        ("hour", "refused"),
        "The first refusal of an hour; later ones in the same hour send nothing.",
    ),
    "member.joined": _object({"member": ref("WebhookMember"), "actor": ACTOR}, ("member", "actor")),
    "member.removed": _object(
        {
            "member": ref("WebhookMember"),
            "actor": ACTOR,
            "reason": {"type": "string", "description": "Why, when not a plain removal: `organization_deleted`."},
        },
        ("member", "actor"),
    ),
    TEST_EVENT: _object(
        {}, description="Sent by “Send a test event” to one endpoint only. Acknowledge it; it means nothing."
    ),
}


def schemas() -> dict[str, Any]:
    """The shared parts of every payload, and one envelope schema per event type."""
    shared = {
        "WebhookOrganization": _object(
            {"id": {"type": "string", "format": "uuid"}, "slug": {"type": "string"}, "name": {"type": "string"}},
            ("id", "slug", "name"),
        ),
        "WebhookKey": _object(
            {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "hint": {"type": "string", "description": "The key's prefix and last characters; never the key."},
                "environment": {"type": "string", "enum": ["test", "live"]},
                "expires_at": {**_nullable(TIMESTAMP), "description": "Null: never expires."},
            },
            ("id", "name", "hint", "environment", "expires_at"),
            "A key as events describe it: never the secret.",
        ),
        "WebhookMember": _object(
            {
                "user_id": {"type": ["string", "null"], "format": "uuid"},
                "email": {"type": ["string", "null"]},
                "name": {"type": ["string", "null"]},
                "role": {"type": ["string", "null"], "enum": [*ROLES, None]},
            },
            ("user_id", "email", "name", "role"),
        ),
    }
    envelopes = {schema_name(name): _envelope(name) for name in _DATA}
    return shared | envelopes | {schema_name(name, "Data"): data for name, data in _DATA.items()}


def _envelope(event_type: str) -> dict[str, Any]:
    return _object(
        {
            "id": {
                "type": "string",
                "pattern": "^evt_[0-9a-f]{32}$",
                "description": "The event's id: the same in every retry, so a receiver can drop duplicates.",
            },
            "type": {"const": event_type},
            "version": {
                "const": PAYLOAD_VERSION,
                "description": "The payload's version. Fields may be added without a new version; a change "
                "that removes or redefines one increments it.",
            },
            "created_at": {**TIMESTAMP, "description": "When it happened."},
            "organization": ref("WebhookOrganization"),
            "data": ref(schema_name(event_type, "Data")),
        },
        ("id", "type", "version", "created_at", "organization", "data"),
        _description(event_type),
    )


def _description(event_type: str) -> str:
    if event_type == TEST_EVENT:
        return "A test event."
    return EVENTS[event_type].description


def parameters() -> dict[str, Any]:
    """The Standard Webhooks signature headers, as reusable header parameters."""
    return {
        "webhook-id": {
            "name": "webhook-id",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "The message's id, the same in every retry: use it to drop duplicates.",
        },
        "webhook-timestamp": {
            "name": "webhook-timestamp",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
            "description": "When this attempt was signed, in seconds since the Unix epoch. Refuse a message "
            "whose timestamp is more than a few minutes away from your clock (replays).",
        },
        "webhook-signature": {
            "name": "webhook-signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$"},
            "description": "`v1,<base64 HMAC-SHA256>` of `<webhook-id>.<webhook-timestamp>.<body>` under the "
            "endpoint's signing secret (the base64 after `whsec_`); space-separated, one per secret while a "
            "rotated secret overlaps. The `standardwebhooks` libraries check it.",
        },
    }


# Examples: the values a real organization and key would give, through the functions that build real payloads.
_AT = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
_ORG = Organization(id=uuid.UUID("0b7e9d52-3c4f-4a1e-8f6b-7d2c5e9a1f03"), slug="acme", name="Acme Robotics")
_ACTOR = "Ada Lovelace <ada@acme.example>"


def _key(name: str, key_id: str, hint: str, environment: str = "live", expires: datetime | None = None) -> Any:
    return key_data(ApiKey(id=uuid.UUID(key_id), name=name, hint=hint, environment=environment, expires_at=expires))


def _example_data() -> dict[str, dict[str, Any]]:
    checkout = _key("Checkout service", "5f0c2a4e-8d1b-4c3a-9e7f-2b6d1a0c9e84", "pk_live_Xb7k…9xQ2")
    expiring = _key(
        "Partner sandbox",
        "9a3e1c7b-2f4d-4e8a-b1c6-3d5f7a9e2b40",
        "pk_test_Qw3r…L7mD",
        "test",
        datetime(2026, 12, 9, 23, 59, 59, tzinfo=UTC),
    )
    member = {"user_id": "c41d8f2e-6b7a-4c3d-9e1f-5a2b8c7d6e90", "email": "lin@acme.example", "name": "Lin Park"}
    return {
        "key.created": {"actor": _ACTOR, "key": checkout},
        "key.rolled": {
            "actor": _ACTOR,
            "key": checkout,
            "new_key": _key("Checkout service", "7d2b4f6a-1c3e-4a5b-8d7f-9e1a2c4b6d80", "pk_live_mN4p…Tr5K"),
            "old_key_stops_at": "2026-12-03T09:30:00+00:00",
        },
        "key.revoked": {
            "actor": "GitHub secret scanning",
            "key": checkout,
            "reason": "reported_leaked",
            "source": "secret_scanning",
        },
        "key.leak_reported": {"actor": "Leak report (anonymous)", "key": checkout, "source": "revocation_api"},
        "key.expiring": {"key": expiring, "days": EXPIRY_WARNINGS_DAYS[0]},
        "key.expired": {"key": expiring},
        "key.idle": {"key": checkout, "idle_days": 30, "last_used_at": "2026-11-02T17:04:11+00:00"},
        "quota.threshold": {
            "percent": QUOTA_THRESHOLDS[0],
            "used": 8000,
            "quota": 10000,
            "month": "2026-12",
            "hard": True,
        },
        "ratelimit.exceeded": {"hour": "2026-12-02T09:00:00+00:00", "refused": 1},
        "member.joined": {"actor": "Lin Park <lin@acme.example>", "member": {**member, "role": "developer"}},
        "member.removed": {"actor": _ACTOR, "member": {**member, "role": "developer"}},
        TEST_EVENT: {},
    }


def example(event_type: str) -> dict[str, Any]:
    """A payload of ``event_type`` as an endpoint would receive it."""
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"https://procode.dev/events/{event_type}")
    return payload_for(event_id, _ORG, event_type, _example_data()[event_type], _AT)


def webhooks() -> dict[str, Any]:
    """The ``webhooks`` object: each event type's POST, its body, headers and the answer expected."""
    return {
        name: {
            "post": {
                "operationId": "webhook" + schema_name(name).removesuffix("Event"),
                "summary": EVENTS[name].label if name in EVENTS else "Test event",
                "description": _description(name)
                + " Sent to each endpoint subscribed to it (or to every event), signed per the Standard "
                "Webhooks specification; docs/notifications.md shows how to check the signature.",
                "parameters": [{"$ref": f"#/components/parameters/{header}"} for header in SIGNATURE_HEADERS],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(schema_name(name)), "example": example(name)}},
                },
                "responses": {
                    "2XX": {
                        "description": "Any 2xx answer acknowledges the event. Anything else, or no answer within "
                        "the timeout, is retried with backoff; the body of the answer is ignored."
                    }
                },
            }
        }
        for name in _DATA
    }
