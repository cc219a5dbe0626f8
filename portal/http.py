"""Small view helpers shared by blueprints."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from flask import abort, current_app, render_template, request

from portal.db import get_org_scoped
from portal.pagination import clamp_page

T = TypeVar("T")


def render_form_page(template: str, status_on_error: int = 422, **context: Any) -> tuple[str, int]:
    """Render a page with a form; a POST that reached here failed validation, so answer 422."""
    status = status_on_error if request.method == "POST" else 200
    return render_template(template, **context), status


def get_org_scoped_or_404(model: type[T], organization_id: uuid.UUID, object_id: Any) -> T:
    """One org-owned row by id, or 404, so another organization's rows look absent rather than forbidden."""
    row = get_org_scoped(model, organization_id, object_id)
    if row is None:
        abort(404)
    return row


def safe_next_url(target: str | None) -> str | None:
    """Only same-site relative paths are followed after sign-in."""
    if not target:
        return None
    if "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return None  # browsers read "/\\evil.example" as "//evil.example"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


def upgrade_url(subject: str) -> str:
    """Where an organization that needs more (keys, calls) can go: the configured upgrade page, else a mail to
    support about ``subject``."""
    configured = current_app.config.get("UPGRADE_URL")
    if configured:
        return str(configured)
    return f"mailto:{current_app.config['SUPPORT_EMAIL']}?subject={quote(subject)}"


def page_arg(name: str = "page") -> int:
    """A 1-based page number from the query string; junk reads as page 1."""
    return clamp_page(request.args.get(name, 1, type=int))


FORM_MIMETYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def refuse_non_form_bodies() -> None:
    """Portal pages take HTML forms only. Flask-WTF would read a JSON body as form data, where values that are
    not strings break validators and NUL escapes the refusal in ``start_request``; so any other body is 415,
    before CSRF is checked. An empty POST (a button with no fields) is fine; ``/v1`` reads its own JSON."""
    if request.method not in BODY_METHODS or request.path == "/v1" or request.path.startswith("/v1/"):
        return
    if request.mimetype in FORM_MIMETYPES or (not request.mimetype and not request.content_length):
        return
    abort(415, "This page accepts form submissions only (application/x-www-form-urlencoded or multipart/form-data).")
