"""Passkeys (WebAuthn) as a second factor: the ceremony options and their verification, via py_webauthn.

No Flask request here: the relying party (its id, name and origin) is passed in by the view.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from portal.models import Passkey, User

if TYPE_CHECKING:
    from webauthn.helpers.structs import PublicKeyCredentialDescriptor

# py_webauthn (and the CBOR and crypto code under it) is imported where a ceremony runs, not when the app
# loads: most workers never see a passkey, and it is ~20 MB of every worker's memory otherwise.

MAX_CREDENTIAL_JSON = 16 * 1024  # an attestation with a certificate chain is a few KB
CHALLENGE_MAX_AGE = timedelta(minutes=10)  # an issued challenge must be answered within this


class PasskeyError(Exception):
    """The browser's answer could not be verified; the message is safe to show."""


@dataclass(frozen=True)
class RelyingParty:
    """Who the passkeys are for: ``id`` is a host name (never an IP address), ``origin`` the site's origin."""

    id: str
    name: str
    origin: str


@dataclass(frozen=True)
class NewCredential:
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: list[str]


def _descriptors(passkeys: list[Passkey]) -> list[PublicKeyCredentialDescriptor]:
    from webauthn.helpers.structs import AuthenticatorTransport, PublicKeyCredentialDescriptor

    known = {t.value for t in AuthenticatorTransport}
    return [
        PublicKeyCredentialDescriptor(
            id=p.credential_id, transports=[AuthenticatorTransport(t) for t in p.transports if t in known]
        )
        for p in passkeys
    ]


def registration_options(user: User, rp: RelyingParty, existing: list[Passkey]) -> tuple[str, bytes]:
    """Options for ``navigator.credentials.create`` (JSON) and the challenge to keep for the answer."""
    from webauthn import generate_registration_options, options_to_json
    from webauthn.helpers.structs import (
        AuthenticatorSelectionCriteria,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_name=user.email,
        user_id=uuid.UUID(str(user.id)).bytes,
        user_display_name=user.display_name,
        exclude_credentials=_descriptors(existing),  # the same authenticator twice would not be a second key
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
    )
    return options_to_json(options), options.challenge


def _load(credential_json: str) -> dict[str, Any]:
    if not credential_json or len(credential_json) > MAX_CREDENTIAL_JSON:
        raise PasskeyError("The browser sent no usable passkey answer. Try again.")
    try:
        value = json.loads(credential_json)
    except ValueError:
        raise PasskeyError("The browser sent no usable passkey answer. Try again.") from None
    if not isinstance(value, dict):
        raise PasskeyError("The browser sent no usable passkey answer. Try again.")
    return value


def verify_registration(credential_json: str, challenge: bytes, rp: RelyingParty) -> NewCredential:
    from webauthn import verify_registration_response
    from webauthn.helpers import parse_registration_credential_json
    from webauthn.helpers.exceptions import WebAuthnException

    value = _load(credential_json)
    try:
        parsed = parse_registration_credential_json(value)
        verified = verify_registration_response(
            credential=parsed, expected_challenge=challenge, expected_rp_id=rp.id, expected_origin=rp.origin
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise PasskeyError(f"This passkey could not be verified ({exc}).") from None
    transports = [t.value for t in (parsed.response.transports or [])]
    return NewCredential(verified.credential_id, verified.credential_public_key, verified.sign_count, transports)


def authentication_options(rp: RelyingParty, passkeys: list[Passkey]) -> tuple[str, bytes]:
    """Options for ``navigator.credentials.get`` naming the account's passkeys, and the challenge to keep."""
    from webauthn import generate_authentication_options, options_to_json
    from webauthn.helpers.structs import UserVerificationRequirement

    options = generate_authentication_options(
        rp_id=rp.id,
        allow_credentials=_descriptors(passkeys),
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    return options_to_json(options), options.challenge


def credential_id_of(credential_json: str) -> bytes:
    """The raw id of the passkey an assertion claims to come from (not yet verified)."""
    from webauthn.helpers import parse_authentication_credential_json
    from webauthn.helpers.exceptions import WebAuthnException

    try:
        return bytes(parse_authentication_credential_json(_load(credential_json)).raw_id)
    except (WebAuthnException, ValueError, TypeError, KeyError):
        raise PasskeyError("The browser sent no usable passkey answer. Try again.") from None


def verify_assertion(credential_json: str, challenge: bytes, rp: RelyingParty, passkey: Passkey) -> int:
    """Check the signature, challenge, origin, RP ID and sign count; returns the authenticator's new count."""
    from webauthn import verify_authentication_response
    from webauthn.helpers import parse_authentication_credential_json
    from webauthn.helpers.exceptions import WebAuthnException

    try:
        verified = verify_authentication_response(
            credential=parse_authentication_credential_json(_load(credential_json)),
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=passkey.public_key,
            credential_current_sign_count=passkey.sign_count,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError):
        raise PasskeyError("That passkey could not be verified. Try again or use a code.") from None
    return int(verified.new_sign_count)
