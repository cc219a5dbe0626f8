"""Behind a reverse proxy (``PORTAL_TRUST_PROXY=1``): keep the forwarded client address only if it is one.

``ProxyFix`` copies the last ``X-Forwarded-For`` entry into ``REMOTE_ADDR`` as it is. A value that is not an
IP address (``not-an-ip``, a hostname, junk from a misconfigured proxy) would reach the throttle buckets and
the audit trail's ``inet`` column, where it fails the request; it is replaced by the socket peer instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from werkzeug.http import parse_list_header

# How many proxies' ``X-Forwarded-For`` entries are believed: ProxyFix's ``x_for`` (portal/__init__.py).
TRUSTED_HOPS = 1


def is_ip_address(value: str | None) -> bool:
    try:
        ipaddress.ip_address(value or "")
    except ValueError:
        return False
    return True


class ValidForwardedFor:
    """WSGI middleware around ``ProxyFix``: it sees the environ after ProxyFix rewrote it."""

    def __init__(self, proxy_fix: Any) -> None:
        self.proxy_fix = proxy_fix
        self.app = proxy_fix.app
        proxy_fix.app = self._check

    def _check(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not is_ip_address(environ.get("REMOTE_ADDR")):
            original = environ.get("werkzeug.proxy_fix.orig", {})
            environ["REMOTE_ADDR"] = original.get("REMOTE_ADDR")
        return self.app(environ, start_response)  # type: ignore[no-any-return]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.proxy_fix(environ, start_response)  # type: ignore[no-any-return]


def client_address(environ: dict[str, Any], trusted: bool) -> str | None:
    """The client address the app's views see (``REMOTE_ADDR`` after ``ProxyFix`` and :class:`ValidForwardedFor`),
    for WSGI code that runs before them: the verification fast path (portal/api/fastpath.py)."""
    if trusted:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        values = parse_list_header(forwarded) if forwarded else []
        if len(values) >= TRUSTED_HOPS and is_ip_address(values[-TRUSTED_HOPS]):
            return values[-TRUSTED_HOPS]
    return environ.get("REMOTE_ADDR")
