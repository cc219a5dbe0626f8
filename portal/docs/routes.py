"""The API reference page: the OpenAPI document served at ``/v1/openapi.json``, rendered server-side."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, render_template
from markupsafe import Markup, escape

from portal.api.openapi import openapi_document
from portal.docs import bp


def operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each path and method as one flat record, responses sorted by status, ``$ref``s resolved one level."""
    schemas = document["components"]["schemas"]
    result = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            responses = []
            for status, answer in sorted(op["responses"].items()):
                media = answer.get("content", {}).get("application/json", {})
                schema = media.get("schema", {})
                name = schema.get("$ref", "").rsplit("/", 1)[-1]
                responses.append(
                    {
                        "status": status,
                        "description": answer["description"],
                        "schema_name": name,
                        "headers": list(answer.get("headers", {})),
                        "example": media.get("example"),
                    }
                )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            body_name = body.get("$ref", "").rsplit("/", 1)[-1]
            result.append(
                {
                    "path": path,
                    "method": method.upper(),
                    "op": op,
                    "responses": responses,
                    "body": schemas.get(body_name),
                }
            )
    return result


_TICKS = re.compile(r"`([^`]+)`")


@bp.app_template_filter("ticks")
def ticks(text: str | None) -> Markup:
    """The OpenAPI descriptions' `code` spans as <code>, everything else escaped."""
    return Markup(_TICKS.sub(lambda m: f"<code>{m.group(1)}</code>", str(escape(text or ""))))  # noqa: S704


@bp.get("/api")
def api() -> Any:
    document = openapi_document()
    return render_template(
        "docs/api.html",
        doc=document,
        operations=operations(document),
        schemas=document["components"]["schemas"],
        headers=document["components"]["headers"],
        webhook_headers=list(document["components"]["parameters"].values()),
        api_base=current_app.config.get("PUBLIC_API_BASE", ""),
    )
