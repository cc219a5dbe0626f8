"""Small view helpers shared by blueprints."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import render_template, request


def render_form_page(template: str, status_on_error: int = 422, **context: Any) -> tuple[str, int]:
    """Render a page with a form; a POST that reached here failed validation, so answer 422."""
    status = status_on_error if request.method == "POST" else 200
    return render_template(template, **context), status


def safe_next_url(target: str | None) -> str | None:
    """Only same-site relative paths are followed after sign-in."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target
