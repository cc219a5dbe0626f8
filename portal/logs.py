"""Log lines carry the request id, so a user's quoted id finds the server-side error."""

from __future__ import annotations

import logging

from flask import Flask, g, has_app_context


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_app_context() else "-"
        return True


def configure_logging(app: Flask) -> None:
    if app.testing:
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    logger = logging.getLogger("portal")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
