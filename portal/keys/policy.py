"""What a key's policy may hold, checked the same way for the pages, the CLI and the services.

``KeyPolicy`` carries a key's policy, as given and as stored. Each ``parse_*`` takes what a person typed and
returns the stored form, or raises ``ValueError`` with a message for them. No Flask here.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

MAX_ALLOWED_IPS = 50
MAX_META_BYTES = 4096
MAX_EXTERNAL_ID_CHARS = 128


@dataclass(frozen=True)
class KeyPolicy:
    """What a verification enforces and returns for a key, beyond its status (its scopes checked by
    :mod:`portal.scopes`, the rest by the functions below)."""

    scopes: list[str] | None = None  # None = full access
    allowed_ips: list[str] | str | None = None  # empty = any address; text: one per line or comma-separated
    rate_limit: int | None = None  # None = only the organization's limit
    meta: dict[str, Any] | str | None = None  # text: JSON
    external_id: str | None = None


def parse_cidrs(values: list[str] | str | None) -> list[str]:
    """IPv4/IPv6 addresses or networks (one per line or comma-separated) as canonical CIDRs, in order, without
    repeats; an address alone is its /32 or /128. Host bits set (``10.0.0.1/8``) are an error, as PostgreSQL's
    ``cidr`` would make them."""
    if values is None:
        return []
    items = re.split(r"[\s,]+", values) if isinstance(values, str) else [v.strip() for v in values]
    found: list[str] = []
    for item in filter(None, items):
        if "%" in item:
            raise ValueError(f"“{item[:60]}” names a network interface (%…): give the address or network alone.")
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError:
            raise ValueError(
                f"“{item[:60]}” is not an IPv4 or IPv6 address or network (like 203.0.113.0/24)."
            ) from None
        if str(network) not in found:
            found.append(str(network))
    if len(found) > MAX_ALLOWED_IPS:
        raise ValueError(f"At most {MAX_ALLOWED_IPS} addresses or networks per key.")
    return found


def parse_meta(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """A JSON object of at most 4 KB (serialized); empty text is an empty object."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError('Metadata must be valid JSON, like {"team": "billing"}.') from None
    else:
        value = text
    if not isinstance(value, dict):
        raise ValueError('Metadata must be a JSON object (in braces), like {"team": "billing"}.')
    if len(meta_text(value).encode()) > MAX_META_BYTES:
        raise ValueError(f"Metadata may be at most {MAX_META_BYTES} bytes as JSON.")
    if "\u0000" in meta_text(value):
        raise ValueError("Metadata may not contain NUL characters.")
    return value


def meta_text(meta: dict[str, Any]) -> str:
    """The stored object as compact JSON (also what counts against the size limit)."""
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False)


def parse_external_id(text: str | None) -> str | None:
    """Your own identifier for the key: up to 128 printable characters; empty means none."""
    value = (text or "").strip()
    if not value:
        return None
    if len(value) > MAX_EXTERNAL_ID_CHARS or not value.isprintable():
        raise ValueError(f"The external id must be at most {MAX_EXTERNAL_ID_CHARS} printable characters.")
    return value


def check_rate_limit(value: int | None, plan_limit: int) -> int | None:
    """Requests per minute for the key alone: 1 up to the plan's own limit; ``None`` for only the plan's."""
    if value is None:
        return None
    if not 1 <= value <= plan_limit:
        raise ValueError(f"The key's limit must be between 1 and the plan's {plan_limit} requests per minute.")
    return value
