"""The API key format: ``pk_{test|live}_`` + 32 base62 characters (190 bits) + a 6-character CRC32 checksum.

The checksum lets anyone (our verifier, a secret scanner, a customer's CI) reject a mistyped or truncated key
without a database round-trip. Keys are never stored: only an HMAC-SHA256 under the server's pepper.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 32  # 32 * log2(62) ≈ 190 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so any CRC32 fits
PREFIXES = {"test": "pk_test_", "live": "pk_live_"}
KEY_LENGTH = len("pk_test_") + BODY_LENGTH + CHECKSUM_LENGTH
KEY_PATTERN = re.compile(rf"\Apk_(test|live)_([0-9A-Za-z]{{{BODY_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})\Z")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def checksum(prefix_and_body: str) -> str:
    return _base62(zlib.crc32(prefix_and_body.encode("ascii")), CHECKSUM_LENGTH)


def generate(environment: str) -> str:
    prefix = PREFIXES[environment]
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return prefix + body + checksum(prefix + body)


@dataclass(frozen=True)
class ParsedKey:
    environment: str
    key: str


def parse(candidate: object) -> ParsedKey | None:
    """The key's environment if ``candidate`` is well-formed with a valid checksum, else ``None``."""
    if not isinstance(candidate, str) or len(candidate) != KEY_LENGTH:
        return None
    match = KEY_PATTERN.match(candidate)
    if match is None:
        return None
    if not hmac.compare_digest(checksum(candidate[:-CHECKSUM_LENGTH]), match.group(3)):
        return None
    return ParsedKey(environment=match.group(1), key=candidate)


def key_hash(key: str, pepper: str) -> bytes:
    return hmac.new(pepper.encode(), key.encode("ascii"), hashlib.sha256).digest()


def hint(key: str) -> str:
    """What the portal shows in place of the key: ``pk_live_Ab12…wxyz``."""
    prefix_len = len("pk_test_")
    return f"{key[: prefix_len + 4]}…{key[-4:]}"
