"""Reading a verification request. Anything that is not a verification is a 400 and never a usage row.

A candidate key must be a string of 1–256 printable ASCII characters (what a bearer token can be); such a
string is verified, and answered ``malformed`` if it is not a well-formed ProCode key. Anything else (not
JSON, not an object, not a string, too long, control characters, non-ASCII) is not a credential at all: 400.
An ``endpoint`` is 1–200 printable ASCII characters too: an HTTP path is ASCII (anything else is
percent-encoded), and a usage row stores nothing a terminal, a CSV export or a log line could misread.

A gateway's call (``/v1/keys/verify/gateway``, docs/gateways.md) is read from headers alone, and a gateway
cannot relay a 400: a call without a usable credential is 401, and any credential it does carry is verified.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from werkzeug.wrappers import Request

from portal.scopes import SCOPE_SET

MAX_BODY_BYTES = 16 * 1024
MAX_KEY_CHARS = 256
MAX_ENDPOINT_CHARS = 200
MAX_CLIENT_IP_CHARS = 64
MAX_USER_AGENT_CHARS = 512  # accepted; a usage row keeps the first 256


class BadRequest(Exception):
    """A request that is not a verification: answered 400 with ``{"error": {"code", "message"}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    key: str
    endpoint: str | None
    scope: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None


def parse_scope(value: object) -> str | None:
    """A scope of the catalogue (:mod:`portal.scopes`), ``None`` when absent; anything else is a 400."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in SCOPE_SET:
        raise BadRequest("invalid_scope", "'scope' must be one of the ProCode API scopes, e.g. 'files:write'.")
    return value


def parse_client_ip(value: object) -> str | None:
    """An IPv4 or IPv6 address in canonical form (an IPv4-mapped IPv6 address as IPv4); ``None`` when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CLIENT_IP_CHARS:
        raise BadRequest("invalid_client_ip", "'client_ip' must be an IPv4 or IPv6 address.")
    canonical = _canonical_address(value.strip())
    if canonical is None:
        raise BadRequest("invalid_client_ip", "'client_ip' must be an IPv4 or IPv6 address.")
    return canonical


@functools.lru_cache(maxsize=4096)
def _canonical_address(text: str) -> str | None:
    """Parsing an address is a measurable share of a verification; a service's clients repeat, so remember."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:  # fe80::1%eth0: the zone names the caller's interface, not an address
            address = ipaddress.IPv6Address(int(address))
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return str(address)


def parse_user_agent(value: object) -> str | None:
    """The client's user agent as given (printable text); ``None`` when absent or empty."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_USER_AGENT_CHARS or not value.isprintable():
        raise BadRequest(
            "invalid_user_agent", f"'user_agent' must be at most {MAX_USER_AGENT_CHARS} printable characters."
        )
    return value.strip() or None


def peer_address(value: str | None) -> str | None:
    """The calling peer's address in canonical form; ``None`` when it is not an IP address (a unix socket)."""
    try:
        return parse_client_ip(value)
    except BadRequest:
        return None


def _is_token(value: str) -> bool:
    return 0 < len(value) <= MAX_KEY_CHARS and value.isascii() and value.isprintable() and " " not in value


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header value, ``None`` when there is no header."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise BadRequest("unsupported_authorization", "Send the key as 'Authorization: Bearer <key>'.")
    token = token.strip()
    if not _is_token(token):
        raise BadRequest("invalid_key", "The bearer token must be 1 to 256 printable ASCII characters.")
    return token


def bearer_token(request: Request) -> str | None:
    return parse_bearer(request.headers.get("Authorization"))


def _too_large() -> BadRequest:
    return BadRequest("body_too_large", f"The request body must be at most {MAX_BODY_BYTES} bytes.")


@dataclass(frozen=True, slots=True)
class RawRequest:
    """What a verification needs from HTTP: the Authorization header, the media type, the body and the peer."""

    authorization: str | None
    mimetype: str
    body: bytes
    remote_addr: str | None = None  # who made the call (the proxy's forwarded address behind a trusted proxy)


def read_request(request: Request) -> RawRequest:
    """From a werkzeug/Flask request (the Flask view)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large()
    return RawRequest(
        request.headers.get("Authorization"), request.mimetype, request.get_data(cache=False), request.remote_addr
    )


def read_environ(environ: dict[str, Any]) -> RawRequest:
    """From the WSGI environ (the fast path): never reads more than ``MAX_BODY_BYTES`` + 1 bytes."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("invalid_request", "Content-Length is not a number.") from None
    if length > MAX_BODY_BYTES:
        raise _too_large()
    stream = environ["wsgi.input"]
    if length:
        body = stream.read(length)
    elif environ.get("wsgi.input_terminated"):  # chunked: the server knows where the body ends
        body = stream.read(MAX_BODY_BYTES + 1)
    else:
        body = b""
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    return RawRequest(environ.get("HTTP_AUTHORIZATION"), mimetype, body, environ.get("REMOTE_ADDR"))


def _body(raw: RawRequest) -> dict[str, object] | None:
    data = raw.body
    if not data:
        return None
    if len(data) > MAX_BODY_BYTES:
        raise _too_large()
    if raw.mimetype != "application/json":
        raise BadRequest("unsupported_content_type", "Send the body as application/json.")
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest("invalid_json", "The body is not valid JSON (UTF-8).") from None
    if not isinstance(payload, dict):
        raise BadRequest("invalid_json", "The body must be a JSON object.")
    return payload


def parse_verify_request(raw: RawRequest) -> VerifyRequest:
    """The key (body ``key`` or bearer token) and optional ``endpoint`` of a verification request."""
    body = _body(raw) or {}
    header_key = parse_bearer(raw.authorization)
    key = body.get("key")
    if key is None:
        key = header_key
    elif not isinstance(key, str):
        raise BadRequest("invalid_key", "'key' must be a string.")
    elif not _is_token(key):
        raise BadRequest("invalid_key", "'key' must be 1 to 256 printable ASCII characters.")
    elif header_key is not None and header_key != key:
        raise BadRequest("conflicting_keys", "The body and the Authorization header name different keys.")
    if key is None:
        raise BadRequest("missing_key", "Send the key as JSON {\"key\": …} or 'Authorization: Bearer <key>'.")
    endpoint = body.get("endpoint")
    if endpoint is not None:
        if not isinstance(endpoint, str):
            raise BadRequest("invalid_endpoint", "'endpoint' must be a string.")
        if not 0 < len(endpoint) <= MAX_ENDPOINT_CHARS or not endpoint.isascii() or not endpoint.isprintable():
            raise BadRequest(
                "invalid_endpoint",
                f"'endpoint' must be 1 to {MAX_ENDPOINT_CHARS} printable ASCII characters (percent-encode the rest).",
            )
    return VerifyRequest(
        key=key,
        endpoint=endpoint,
        scope=parse_scope(body.get("scope")),
        client_ip=parse_client_ip(body.get("client_ip")),
        user_agent=parse_user_agent(body.get("user_agent")),
    )


# What a gateway may call /v1/keys/verify/gateway with: Caddy always sends GET, nginx the method it is given.
GATEWAY_METHODS = frozenset({"GET", "HEAD", "POST"})
MAX_METHOD_CHARS = 16
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # RFC 3986 pchar and "/": everything else is percent-encoded


class NoCredential(BadRequest):
    """A gateway's call without one usable key: answered 401 with ``WWW-Authenticate: Bearer``, not metered."""


@dataclass(frozen=True, slots=True)
class RawGatewayRequest:
    """What a gateway's call carries: the credentials, the original request's method and URI, the client."""

    authorization: str | None
    api_key: str | None  # the value of the ``API_KEY_HEADER`` header
    uri: str | None  # X-Forwarded-Uri, else X-Original-URI
    method: str | None  # X-Forwarded-Method, else X-Original-Method
    query: str  # the gateway call's own query string: ``scope=…``
    client_ip: str | None  # the client's address as the trusted proxy settings give it (portal/proxy.py)
    user_agent: str | None = None  # the original request's User-Agent (gateways forward its headers)


def read_gateway_request(request: Request, key_header: str | None) -> RawGatewayRequest:
    """From a werkzeug/Flask request (the Flask view); ``remote_addr`` is already the forwarded address."""
    headers = request.headers
    return RawGatewayRequest(
        headers.get("Authorization"),
        headers.get(key_header) if key_header else None,
        headers.get("X-Forwarded-Uri") or headers.get("X-Original-URI"),
        headers.get("X-Forwarded-Method") or headers.get("X-Original-Method"),
        request.query_string.decode("latin-1"),
        request.remote_addr,
        headers.get("User-Agent"),
    )


def read_gateway_environ(environ: dict[str, Any], key_variable: str | None, client_ip: str | None) -> RawGatewayRequest:
    """From the WSGI environ (the fast path); ``key_variable`` is the header's ``HTTP_…`` name."""
    return RawGatewayRequest(
        environ.get("HTTP_AUTHORIZATION"),
        environ.get(key_variable) if key_variable else None,
        environ.get("HTTP_X_FORWARDED_URI") or environ.get("HTTP_X_ORIGINAL_URI"),
        environ.get("HTTP_X_FORWARDED_METHOD") or environ.get("HTTP_X_ORIGINAL_METHOD"),
        environ.get("QUERY_STRING", ""),
        client_ip,
        environ.get("HTTP_USER_AGENT"),
    )


def header_variable(name: str | None) -> str | None:
    """``X-API-Key`` → ``HTTP_X_API_KEY``, the environ name of a request header."""
    return "HTTP_" + name.upper().replace("-", "_") if name else None


def gateway_endpoint(uri: str | None, method: str | None) -> str | None:
    """``"GET /orders/7"`` from the original request's method and URI: the path only (a query string can carry
    secrets and makes every call unique), percent-encoded where it is not printable ASCII, cut to the column."""
    if not uri:
        return None
    path = uri.partition("?")[0].partition("#")[0]
    if not path.startswith("/"):  # absolute form: http://host/path
        try:
            path = urlsplit(path).path or "/"
        except ValueError:
            return None
    path = quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
    verb = method.strip().upper() if method else ""
    if verb and verb.isascii() and verb.isalpha() and len(verb) <= MAX_METHOD_CHARS:
        path = f"{verb} {path}"
    return path[:MAX_ENDPOINT_CHARS]


def _gateway_key(raw: RawGatewayRequest, key_header: str | None) -> str:
    """The key from ``Authorization: Bearer`` or the configured header. Another scheme (``Basic`` for the
    upstream's own use) is no key; two different keys are refused rather than one picked."""
    bearer = None
    if raw.authorization:
        scheme, _, token = raw.authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer = token.strip() or None
    header = (raw.api_key or "").strip() or None
    if bearer and header and bearer != header:
        raise NoCredential("conflicting_keys", f"'Authorization' and '{key_header}' name different keys.")
    key = bearer or header
    if key is None:
        where = "'Authorization: Bearer <key>'" + (f" or '{key_header}: <key>'" if key_header else "")
        raise NoCredential("missing_key", f"Send your key as {where}.")
    return key


def parse_gateway_request(raw: RawGatewayRequest, key_header: str | None) -> VerifyRequest:
    """The key, the metered endpoint, the scope the gateway asks for (``?scope=``) and the client address.

    Raises :class:`NoCredential` (401) without a key, :class:`BadRequest` (400: the gateway's configuration,
    not the client, is wrong) for an unknown scope."""
    key = _gateway_key(raw, key_header)
    scope = None
    if raw.query:
        scopes = parse_qs(raw.query).get("scope")
        scope = parse_scope(scopes[-1] if scopes else None)
    try:
        client_ip = parse_client_ip(raw.client_ip)
    except BadRequest:
        client_ip = None  # not an IP address (a unix socket peer): a key with an allowlist refuses the call
    agent = raw.user_agent if raw.user_agent and raw.user_agent.isprintable() else None  # a header, never a 400
    return VerifyRequest(key, gateway_endpoint(raw.uri, raw.method), scope, client_ip, agent)
