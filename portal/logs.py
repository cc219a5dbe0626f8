"""Log lines carry the request id, so a user's quoted id finds the server-side error; one line per request.

``LOG_FORMAT=text`` (the default) writes ``time LEVEL [request id] logger: message``; ``LOG_FORMAT=json`` writes
one JSON object per line with the same fields plus each request's own (:data:`REQUEST_FIELDS`). A request's line
names its route by endpoint name, never its path or query string (paths can hold mailed one-time tokens), and
no header or body: no key, password or token reaches a log through it. Where there is no route yet (gunicorn's
own lines, written before the app is called), :func:`redacted_path` is what names the request.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Container
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, has_app_context

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
requests_log = logging.getLogger("portal.requests")
_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, as the JSON formatter's encoder writes it
_LOGGING_STARTED: float = getattr(logging, "_startTime", time.time())  # what LogRecord.relativeCreated counts from
# What a request's line carries besides the request id, in this order (JSON keys; ``key=value`` in text).
REQUEST_FIELDS = ("method", "route", "status", "duration_ms", "user_id", "organization_id")
REQUEST_MESSAGE = "%s %s %d %.2fms user=%s org=%s"
REDACTED = "…"  # what stands for a path segment that is not one of the routes' own words


def route_words(app: Any) -> frozenset[str]:
    """The fixed segments of every URL rule of ``app`` (``orgs``, ``keys``, ``password``, ``reset``, ``v1``):
    the only parts of a path :func:`redacted_path` keeps; none for an object without Flask's ``url_map``."""
    url_map = getattr(app, "url_map", None)
    if url_map is None:
        return frozenset()
    return frozenset(
        segment
        for rule in url_map.iter_rules()
        for segment in rule.rule.split("/")
        if segment and "<" not in segment and ">" not in segment
    )


def redacted_path(path: str, words: Container[str] = frozenset()) -> str:
    """``path`` as a log line may name it: the query string dropped, and every segment that is not one of
    ``words`` (:func:`route_words`) replaced by ``…``. Whatever a client put in a path (a mailed one-time token,
    an id, a slug, a control character) is never kept, only the routes' own words:
    ``/password/reset/<token>?next=/invite/<token>`` is logged as ``/password/reset/…``."""
    path = path.partition("?")[0].partition("#")[0]
    return "/".join(segment if not segment or segment in words else REDACTED for segment in path.split("/"))


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

    def request_line(self, line: BufferedLine) -> str:
        """What :meth:`format` writes for that request's record, without building the record."""
        created, rid, method, route, status, ms, org = line
        msecs = int((created - int(created)) * 1000.0)
        return (
            f"{self._seconds(created)},{msecs:03d} INFO [{rid}] {requests_log.name}: "
            f"{method} {route or '-'} {status} {ms:.2f}ms user=- org={org or '-'}"
        )


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

    def request_line(self, line: BufferedLine) -> str:
        """What :meth:`format` writes for that request's record, without building the record or a dict (the
        caller's request id and the message are the only strings that need quoting)."""
        created, rid, method, route, status, ms, org = line
        message = REQUEST_MESSAGE % (method, route or "-", status, ms, "-", org or "-")
        return (
            f'{{"time":"{self._seconds(created)}.{int((created - int(created)) * 1000.0):03d}Z","level":"INFO",'
            f'"logger":"{requests_log.name}","request_id":{_quote(rid)},"message":{_quote(message)},'
            f'"method":{_quote(method)},"route":{_quote(route)},"status":{status},"duration_ms":{ms!r},'
            f'"user_id":null,"organization_id":{"null" if org is None else _quote(org)}}}'
        )


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


# A buffered /v1 line: time.time(), request id, method, route, status, duration in ms, organization id or None.
BufferedLine = tuple[float, str, str, str, int, float, str | None]


class RequestLineBuffer:
    """The ``/v1`` calls' request lines, kept per process and written together by the usage writer's flush.

    A verification is answered in a few hundred microseconds; building a log record and writing it through the
    handler chain per call cost about a seventh of that (docs/performance.md). Lines are kept as tuples and
    written every flush (a fifth of a second by default, and at a clean stop), one write for the lot when the
    portal's own handler is the only one (``configure_logging``), else as ordinary records to whatever handlers
    an operator configured. A line is never lost to a busy worker, only delayed by up to a flush.
    """

    def __init__(self) -> None:
        self._lines: deque[BufferedLine] = deque()

    def add(self, request_id: str, method: str, route: str, status: int, duration: float, org: object) -> None:
        self._lines.append(
            (
                time.time(),
                request_id,
                method,
                route,
                status,
                round(duration * 1000.0, 2),
                None if org is None else str(org),
            )
        )

    def __len__(self) -> int:
        return len(self._lines)

    def clear(self) -> None:
        """Forget the buffered lines (a forked child's copy of its parent's, or a test's leftovers)."""
        self._lines.clear()

    def write(self) -> int:
        """Write the lines buffered so far (a concurrent ``add`` waits for the next write); returns how many."""
        lines = self._lines
        taken = [lines.popleft() for _ in range(len(lines))]
        if not taken or not requests_log.isEnabledFor(logging.INFO):
            return 0
        handler = _sole_handler()
        if handler is None:
            for created, rid, method, route, status, ms, org in taken:
                record = RequestRecord(
                    REQUEST_MESSAGE,
                    (method, route, status, ms, "-", org or "-"),
                    request_id=rid,
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=ms,
                    user_id=None,
                    organization_id=org,
                )
                record.created = created
                record.msecs = (created - int(created)) * 1000.0
                requests_log.handle(record)
            return len(taken)
        if getattr(handler.stream, "closed", False):  # the interpreter is exiting and has closed it already
            return 0
        formatter: TextFormatter | JsonFormatter = handler.formatter  # type: ignore[assignment]
        text = "".join([formatter.request_line(line) + handler.terminator for line in taken])
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:  # noqa: BLE001 - as logging.Handler.emit: report, never raise into the caller
            handler.handleError(RequestRecord("%d request lines", (len(taken),)))
        finally:
            handler.release()
        return len(taken)


def _sole_handler() -> logging.StreamHandler[Any] | None:
    """The portal's stream handler when it is the only one a request line reaches, with nothing filtering lines
    but the request-id filter; ``None`` otherwise (lines then go through the logging machinery)."""
    handlers: list[logging.Handler] = []
    logger: logging.Logger | None = requests_log
    while logger is not None:
        if logger.filters:
            return None
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    if len(handlers) != 1:
        return None
    (handler,) = handlers
    if (
        type(handler) is not logging.StreamHandler
        or type(handler.formatter) not in (TextFormatter, JsonFormatter)
        or handler.level > logging.INFO
        or any(type(f) is not RequestIdFilter for f in handler.filters)
    ):
        return None
    return handler


request_lines = RequestLineBuffer()


def _new_process() -> None:
    global _PID
    _PID = os.getpid()
    request_lines.clear()  # the parent's lines are the parent's to write


_PID = os.getpid()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process)
