"""Log lines carry the request id, so a user's quoted id finds the server-side error; one line per request.

``LOG_FORMAT=text`` (the default) writes ``time LEVEL [request id] logger: message``; ``LOG_FORMAT=json`` writes
one JSON object per line with the same fields plus each request's own (:data:`REQUEST_FIELDS`). A request's line
names its route by endpoint name, never its path or query string (paths can hold mailed one-time tokens), and
no header or body: no key, password or token reaches a log through it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, has_app_context

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
requests_log = logging.getLogger("portal.requests")
_LOGGING_STARTED: float = getattr(logging, "_startTime", time.time())  # what LogRecord.relativeCreated counts from
# What a request's line carries besides the request id, in this order (JSON keys; ``key=value`` in text).
REQUEST_FIELDS = ("method", "route", "status", "duration_ms", "user_id", "organization_id")
REQUEST_MESSAGE = "%s %s %d %.2fms user=%s org=%s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # a request's own line brings it (the /v1 fast path has no `g`)
            record.request_id = g.get("request_id", "-") if has_app_context() else "-"
        return True


class _SecondCache:
    """A timestamp's text up to the second, computed once per second (a request line is written per call)."""

    def __init__(self, render: Any) -> None:
        self.render = render
        self.second = -1
        self.text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.text = second, self.render(second)
        return self.text  # type: ignore[no-any-return]


class TextFormatter(logging.Formatter):
    """``time LEVEL [request id] logger: message``, in local time like :class:`logging.Formatter`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _SecondCache(lambda second: time.strftime(self.default_time_format, self.converter(second)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, request id, message, the request's fields,
    and the traceback of an exception."""

    _encoder = json.JSONEncoder(separators=(",", ":"), default=str)

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache(lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": f"{self._seconds(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self._encoder.encode(line)


def configure_logging(app: Flask) -> None:
    if app.testing:
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    fmt = app.config.get("LOG_FORMAT", "text")
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("portal")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class RequestRecord(logging.LogRecord):
    """A request's log record, built without :class:`logging.LogRecord`'s per-record lookups (caller's file,
    thread, process name), which no request line shows and which cost as much as the rest of the line together.
    Every standard attribute is still set, so any handler or format works."""

    def __init__(self, msg: str, args: tuple[Any, ...], **fields: Any) -> None:  # noqa: D107
        self.name = requests_log.name
        self.msg, self.args = msg, args
        self.levelname, self.levelno = "INFO", logging.INFO
        self.pathname, self.filename, self.module, self.funcName, self.lineno = __file__, "logs.py", "logs", "", 0
        self.exc_info = self.exc_text = self.stack_info = None
        self.created = time.time()
        self.msecs = (self.created - int(self.created)) * 1000.0
        self.relativeCreated = (self.created - _LOGGING_STARTED) * 1000.0
        self.thread = self.threadName = self.taskName = None
        self.process, self.processName = _PID, None
        self.__dict__.update(fields)


def log_request(
    request_id: str,
    method: str,
    route: str | None,
    status: int,
    duration: float,
    user_id: object = None,
    organization_id: object = None,
) -> None:
    """One request's line at INFO on ``portal.requests``; ``duration`` in seconds, ids when known.

    The record goes to the logger's handlers directly: ``logger.info`` would also walk the stack for the
    caller's file and line and build a full :class:`logging.LogRecord` (docs/operations.md, "Request logs",
    has what a line costs)."""
    if not requests_log.isEnabledFor(logging.INFO):
        return
    ms = round(duration * 1000.0, 2)
    user = None if user_id is None else str(user_id)
    org = None if organization_id is None else str(organization_id)
    requests_log.handle(
        RequestRecord(
            REQUEST_MESSAGE,
            (method, route or "-", status, ms, user or "-", org or "-"),
            request_id=request_id,
            method=method,
            route=route,
            status=status,
            duration_ms=ms,
            user_id=user,
            organization_id=org,
        )
    )


def _new_process() -> None:
    global _PID
    _PID = os.getpid()


_PID = os.getpid()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process)
