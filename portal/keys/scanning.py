"""GitHub's secret scanning partner program: who may report a key (signatures) and what a report says.

A report is a JSON array of ``{"token", "type", "url", "source"}``, signed with ECDSA P-256 / SHA-256: the
``Github-Public-Key-Signature`` header is the base64 DER signature over the raw body and
``Github-Public-Key-Identifier`` names the key. The public keys come from ``SECRET_SCANNING_PUBLIC_KEYS``
(never fetched at run time): a JSON object of key id → PEM, or GitHub's own
``{"public_keys": [{"key_identifier", "key"}]}`` document, given inline or as the path of a file.
See docs/secret-scanning.md.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal.keys.leaks import ReportedToken

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("portal.keys.scanning")

KEY_ID_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"
MAX_REPORT_BYTES = 1024 * 1024
MAX_REPORT_ITEMS = 1000
MAX_FIELD_CHARS = 1000


class ScanningConfigError(ValueError):
    """``SECRET_SCANNING_PUBLIC_KEYS`` cannot be read."""


class BadReport(ValueError):
    """A correctly signed body that is not a report: answered 400."""


PublicKeys = dict[str, "ec.EllipticCurvePublicKey"]


def _key_map(document: Any) -> dict[str, str]:
    if isinstance(document, dict) and isinstance(document.get("public_keys"), list):
        document = {
            entry.get("key_identifier"): entry.get("key")
            for entry in document["public_keys"]
            if isinstance(entry, dict)
        }
    if not isinstance(document, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in document.items()
    ):
        raise ScanningConfigError("expected a JSON object of key id → PEM public key")
    return document


def parse_public_keys(setting: str | dict[str, str] | None) -> PublicKeys:
    # cryptography is imported where a report arrives, not in every worker at start (it is several MB).
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    """The configured ECDSA P-256 public keys by id; raises :class:`ScanningConfigError` on a bad setting."""
    if not setting:
        return {}
    if isinstance(setting, str):
        text = setting.strip()
        if not text.startswith("{"):
            try:
                text = Path(text).read_text(encoding="utf-8")
            except OSError as exc:
                raise ScanningConfigError(f"cannot read {setting!r}: {exc.strerror}") from None
        try:
            document: Any = json.loads(text)
        except ValueError:
            raise ScanningConfigError("not valid JSON") from None
    else:
        document = setting
    keys: PublicKeys = {}
    for key_id, pem in _key_map(document).items():
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError:
            raise ScanningConfigError(f"key {key_id!r} is not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ScanningConfigError(f"key {key_id!r} is not an ECDSA P-256 key")
        keys[key_id] = key
    return keys


@functools.lru_cache(maxsize=4)
def _cached(setting: str) -> PublicKeys:
    return parse_public_keys(setting)


def public_keys(setting: str | dict[str, str] | None) -> PublicKeys:
    """The keys for ``setting``, parsed once per process; a broken setting is logged and accepts nobody."""
    try:
        return _cached(setting) if isinstance(setting, str) else parse_public_keys(setting)
    except ScanningConfigError as exc:
        log.error("SECRET_SCANNING_PUBLIC_KEYS: %s; secret-scanning reports are refused", exc)
        return {}


def signature_valid(keys: PublicKeys, key_id: str | None, signature: str | None, body: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    """Whether ``signature`` (base64 DER) over ``body`` verifies with the configured key ``key_id``."""
    key = keys.get(key_id or "")
    if key is None or not signature:
        return False
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def _text(entry: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = entry.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD_CHARS:
        raise BadReport(f"Each entry needs {field!r} as a string of 1–{MAX_FIELD_CHARS} characters.")
    return value


def parse_report(body: bytes) -> list[ReportedToken]:
    """The entries of a report; raises :class:`BadReport` for anything else."""
    try:
        document = json.loads(body)
    except ValueError:
        raise BadReport("The body must be a JSON array.") from None
    if not isinstance(document, list) or not 0 < len(document) <= MAX_REPORT_ITEMS:
        raise BadReport(f"The body must be a JSON array of 1–{MAX_REPORT_ITEMS} entries.")
    items = []
    for entry in document:
        if not isinstance(entry, dict):
            raise BadReport('Each entry must be an object {"token", "type", "url", "source"}.')
        items.append(
            ReportedToken(
                token=_text(entry, "token", required=True) or "",
                type=_text(entry, "type") or "",
                url=_text(entry, "url"),
                source=_text(entry, "source"),
            )
        )
    return items
