"""Where a webhook may be sent: https URLs on public addresses, checked when saved and again when sent.

A URL naming a loopback, private, link-local, carrier-grade NAT, multicast or reserved address, or a cloud
metadata service, would let anyone who can add an endpoint make the portal call into its own network. The check
runs on the URL when it is saved and on every address the name resolves to when a delivery is sent (a name can
be pointed elsewhere after it was saved); the deliverer then connects to the address it checked. Development
and tests set ``WEBHOOK_ALLOW_PRIVATE`` to deliver to receivers on loopback over plain http.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000
# Cloud instance metadata services, besides the link-local range they usually sit in.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})


class DestinationError(ValueError):
    """A URL or address a webhook must not be sent to; the message says why, for a form or a delivery log."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def public_address(address: IPAddress) -> bool:
    """True for an address on the public internet (not private, loopback, link-local, reserved …)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return False
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL, stripped, when a webhook may be sent there; else :class:`DestinationError`.

    https only (plain http too with ``allow_private``), no credentials in it, and a host that is not a
    private address written out (names are resolved and checked at delivery)."""
    url = (url or "").strip()
    if not url:
        raise DestinationError("Enter the URL that receives the events.")
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise DestinationError(f"Enter a URL of at most {MAX_URL_LENGTH} characters, without spaces.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationError("Enter a valid URL, such as https://example.com/webhooks.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise DestinationError("Enter an https URL, such as https://example.com/webhooks.")
    if parts.username or parts.password:
        raise DestinationError("Leave credentials out of the URL: verify the signature instead.")
    if parts.fragment:
        raise DestinationError("Leave the #fragment out of the URL: it is never sent.")
    if port == 0:
        raise DestinationError("Enter a valid port.")
    host = parts.hostname.lower()
    if not allow_private:
        if host in METADATA_HOSTS or host == "localhost" or host.endswith((".localhost", ".internal", ".local")):
            raise DestinationError("Enter a public address: webhooks are not sent to internal hosts.")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not public_address(literal):
            raise DestinationError("Enter a public address: webhooks are not sent to private or local addresses.")
    return url


def resolve(host: str, port: int, *, allow_private: bool) -> list[tuple[int, str]]:
    """(family, address) pairs to connect to for ``host``, every one of them public unless ``allow_private``.

    One refused address refuses them all: a name that resolves to a public and a private address could be
    made to reach the private one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DestinationError(f"cannot resolve {host}: {exc}") from None
    found: list[tuple[int, str]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if not allow_private and not public_address(ipaddress.ip_address(address.split("%", 1)[0])):
            raise DestinationError(f"{host} resolves to {address}, which is not a public address")
        if (family, address) not in found:
            found.append((family, address))
    if not found:
        raise DestinationError(f"{host} has no address")
    return found
