"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what a receiver checks with the
``standardwebhooks`` library and the endpoint's ``whsec_`` secret.

``webhook-id`` is the event's ``evt_…`` id, the same on every retry and resend of the event, so a receiver can
drop duplicates; ``webhook-timestamp`` the attempt's time in unix seconds; ``webhook-signature`` one
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret that signs now (two during a rotation's
overlap, space-separated). The body is the payload as compact JSON: the bytes signed are the bytes sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from portal.notify.endpoints import SigningKeys

USER_AGENT = "ProCode-Webhooks/1"


def body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, message_id: str, timestamp: int, data: bytes) -> str:
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + data
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(keys: SigningKeys, message_id: str, timestamp: int, data: bytes) -> dict[str, str]:
    """The request headers of one attempt (the signature headers, the content type and our user agent)."""
    signatures = [signature(keys.current, message_id, timestamp, data)]
    if keys.previous is not None:
        signatures.append(signature(keys.previous, message_id, timestamp, data))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
