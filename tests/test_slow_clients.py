"""Slow clients against the shipped serving path: a real gunicorn (gunicorn.conf.py, portal/serving.py), and the
compose file's nginx (docs/deploy/nginx.conf) in front of it.

A flood of connections that send their headers and 7 bytes of a 100-byte body, then stall, must neither keep a
normal client out nor stay open: the normal client is answered while the flood still holds, and the server
then closes every slow connection (408, or just closed). Against gunicorn alone the flood is larger than all
the workers' connections together and the normal client waits less than the read deadline, so only a server
that makes room for new clients answers it, not one that waits for the flood's deadline to free a connection.

What both write about a request they refuse or pass on never holds a mailed one-time token, a query string or
a Referer: gunicorn's refusal lines and nginx's access log are read back after requests to token paths.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.keys.policy import KeyPolicy
from portal.logs import route_words
from portal.models import ApiKeyUsage, Organization
from tests import factories
from tests.servers import PROXY_CONFIG, ROOT, SECRETS, echo_upstream, gateway_binary, gunicorn, proxy

pytestmark = [pytest.mark.slow_clients, pytest.mark.concurrency]

READ_TIMEOUT = 10  # seconds: GUNICORN_REQUEST_READ_TIMEOUT as shipped, stated because CLIENT_TIMEOUT is under it
CLIENT_TIMEOUT = 8  # seconds a normal client waits for its answer: less than a deadline, generous for busy CI
FLOOD_MOST = 800
MALFORMED = json.dumps({"key": "pk_test_not-a-key"}).encode()
NGINX_MISSING = "nginx is not installed (make test installs Debian's nginx-light when run as root)"
# A mailed one-time token, as it would appear in a link's path and in a `next` query string: never in a log.
TOKEN = "Mailed-0ne-Time-Token_q4N9xZ"
TOKEN_PATH = f"/password/reset/{TOKEN}?next=/invite/{TOKEN}"


def flood_size() -> int:
    """As many slow connections as the file descriptor limit leaves room for (up to ``FLOOD_MOST``), after
    raising this process's soft limit as far as the hard one allows: the servers started here inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * FLOOD_MOST
    if soft != resource.RLIM_INFINITY and soft < wanted and (hard == resource.RLIM_INFINITY or hard > soft):
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    room = FLOOD_MOST if soft == resource.RLIM_INFINITY else (soft - 256) // 3
    if room < 100:
        pytest.skip(f"a file descriptor limit of {soft} leaves no room for a flood")
    return min(FLOOD_MOST, room)


class Flood:
    """Connections that each sent a request's headers and the first 7 bytes of its 100-byte body (or, for
    ``headers_only``, half of its headers), then stall."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.paths: dict[socket.socket, str] = {}

    def open(self, base: str, count: int, path: str, source: str = "127.0.0.1", headers_only: bool = False) -> None:
        host, port = base.removeprefix("http://").split(":")
        if headers_only:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: slow\r\n".encode()
        elif path.startswith("/v1/"):
            request = self._head(host, port, path, "application/json") + b'{"key":'
        else:
            request = self._head(host, port, path, "application/x-www-form-urlencoded") + b"email=x"
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
            sock.sendall(request)
            self.sockets.append(sock)
            self.paths[sock] = path

    @staticmethod
    def _head(host: str, port: str, path: str, content_type: str) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100\r\n\r\n"
        ).encode()

    def still_open(self) -> int:
        """How many have heard nothing from the server yet (no answer, not closed)."""
        with selectors.DefaultSelector() as selector:
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ)
            return len(self.sockets) - len(selector.select(timeout=0))

    def closed_by_server(self, within: float) -> dict[socket.socket, bytes]:
        """Wait (up to ``within`` seconds in all) until the server has closed every connection; what each one
        received before it closed. Connections still open at the end are left out."""
        received = {sock: b"" for sock in self.sockets}
        closed: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + within
        with selectors.DefaultSelector() as selector:
            for sock in self.sockets:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while len(closed) < len(self.sockets) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data = b""
                    if data:
                        received[sock] += data
                        continue
                    selector.unregister(sock)
                    closed[sock] = received[sock]
        return closed

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def flood() -> Iterator[Flood]:
    opened = Flood()
    yield opened
    opened.close()


def served(base: str, source: str = "127.0.0.1", path: str = "/login") -> tuple[int, int]:
    """A normal client's page and /v1 verification (a malformed key), each on a new connection that waits
    ``CLIENT_TIMEOUT`` seconds at most: their statuses."""
    host, port = base.removeprefix("http://").split(":")
    statuses = []
    for method, url, body, headers in (
        ("GET", path, None, {}),
        ("POST", "/v1/keys/verify", MALFORMED, {"Content-Type": "application/json"}),
    ):
        connection = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT, source_address=(source, 0))
        try:
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        finally:
            connection.close()
    return statuses[0], statuses[1]


def warmed_up(base: str) -> str:
    """``base`` once a worker answers: gunicorn's socket takes connections before its workers have loaded the
    app, which can take a while on a busy machine."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("GET", "/login")
        connection.getresponse().read()
    finally:
        connection.close()
    return base


def raw_exchange(base: str, request: bytes, *, then: bytes | None = None) -> bytes:
    """Send ``request`` on a new connection (and ``then``, after the server's first answer), read until closed."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        if then is not None:
            received = sock.recv(65536)
            sock.sendall(then)
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def json_body(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def server_log(log_dir: Path, base: str, holding: str, within: float = 10.0) -> str:
    """gunicorn's log (tests/servers.py) once it holds ``holding``: a refusal is logged just after it is sent."""
    path = log_dir / f"gunicorn-{base.rsplit(':', 1)[1]}.log"
    deadline = time.monotonic() + within
    while holding not in (text := path.read_text(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


# --- gunicorn alone -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def size() -> int:
    return flood_size()


@pytest.fixture(scope="module")
def portal_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("portal")


@pytest.fixture(scope="module")
def portal(app: Any, size: int, portal_logs: Path) -> Iterator[str]:
    """gunicorn with the shipped settings, but fewer connections per worker than a quarter of the flood: the
    flood outnumbers both workers' connections together."""
    with gunicorn(
        app.config["SQLALCHEMY_DATABASE_URI"],
        portal_logs,
        GUNICORN_REQUEST_READ_TIMEOUT=str(READ_TIMEOUT),
        GUNICORN_WORKER_CONNECTIONS=str(size // 4),
    ) as base:
        yield warmed_up(base)


def test_a_slow_body_flood_does_not_keep_a_normal_client_out_of_gunicorn(portal, size, flood):
    flood.open(portal, size * 9 // 20, "/v1/keys/verify")  # the /v1 fast path reads bodies too
    flood.open(portal, size * 9 // 20, "/login")
    flood.open(portal, size // 10, "/login", headers_only=True)
    assert served(portal) == (200, 401)
    # Answered while the flood holds: at least one worker's connections are still taken by it.
    assert flood.still_open() >= size // 8

    closed = flood.closed_by_server(within=READ_TIMEOUT + 20)
    assert len(closed) == len(flood.sockets), "every slow connection is closed by the server"
    for received in closed.values():
        assert received == b"" or status_of(received) == 408, received[:200]
    late = [(flood.paths[sock], received) for sock, received in closed.items() if received]
    assert {path for path, _ in late} == {"/v1/keys/verify", "/login"}
    v1 = next(received for path, received in late if path == "/v1/keys/verify")
    assert json_body(v1)["error"]["code"] == "request_timeout"
    assert served(portal) == (200, 401)


def test_bodies_still_arrive_whole(portal):
    """The worker reads each body before the app: chunked bodies, and clients that wait for 100 Continue."""
    host = portal.removeprefix("http://")
    head = f"POST /v1/keys/verify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(MALFORMED), MALFORMED)
    chunked = raw_exchange(portal, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + body)
    assert status_of(chunked) == 401
    assert json_body(chunked)["code"] == "malformed"
    expecting = raw_exchange(
        portal, f"{head}Expect: 100-continue\r\nContent-Length: {len(MALFORMED)}\r\n\r\n".encode(), then=MALFORMED
    )
    assert expecting.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 ")
    # More than the app accepts is refused from the Content-Length alone: the worker does not wait for it.
    declared = raw_exchange(portal, f"{head}Content-Length: {10 * 1024 * 1024}\r\n\r\n".encode())
    assert status_of(declared) == 400
    assert json_body(declared)["error"]["code"] == "body_too_large"


def test_a_refused_body_is_logged_without_the_token_in_its_path(portal, portal_logs):
    """A chunked body over the limit is refused (413) by the gevent worker before the app sees it: its log line
    names the path by the routes' own words, never the token in it or the query string."""
    host = portal.removeprefix("http://")
    limit = 2 * 1024 * 1024  # MAX_CONTENT_LENGTH
    head = (
        f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    # One byte over the limit, in one chunk: the worker reads it all, to the last chunk, before it refuses, and
    # closes a connection with nothing left unread (the answer is not lost to a reset).
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (limit + 1, b"x" * (limit + 1))
    answer = raw_exchange(portal, head.encode() + body)
    assert status_of(answer) == 413
    log = server_log(portal_logs, portal, "POST /password/reset/")
    (line,) = [line for line in log.splitlines() if "POST /password/reset/" in line]
    assert re.search(r"POST /password/reset/(…|\\u2026) from .*: 413 ", line), line
    assert TOKEN not in log and "next=" not in log


def test_gthread_workers_bound_bodies_too(app, flood, tmp_path):
    with gunicorn(
        app.config["SQLALCHEMY_DATABASE_URI"],
        tmp_path,
        GUNICORN_WORKER_CLASS="gthread",
        GUNICORN_REQUEST_READ_TIMEOUT="2",
    ) as base:
        warmed_up(base)
        flood.open(base, 3, "/v1/keys/verify")
        flood.open(base, 1, TOKEN_PATH)
        assert served(base) == (200, 401)
        closed = flood.closed_by_server(within=20)
        log = server_log(tmp_path, base, "POST /password/reset/")
    assert len(closed) == 4
    assert {status_of(received) for received in closed.values()} == {408}
    # The late body's line names its path by the routes' own words: no token, no query string.
    (line,) = [line for line in log.splitlines() if "POST /password/reset/" in line]
    assert re.search(r"POST /password/reset/(…|\\u2026) from .*: 408 ", line), line
    assert TOKEN not in log and "next=" not in log


@pytest.mark.parametrize("worker", ["GeventWorker", "ThreadWorker"])
def test_gunicorns_own_error_line_names_no_token_either(app, worker):
    """gunicorn logs "Error handling request <method> <uri>" when the app raises past its own handlers: the
    workers redact the request first, as they do for their own refusals."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    from portal import serving

    worker_class = getattr(serving, worker)
    config = Config()
    source = iter([f"GET {TOKEN_PATH} HTTP/1.1\r\nHost: portal\r\n\r\n".encode()])
    request = next(RequestParser(config, source, ("127.0.0.1", 1)))
    worker = worker_class.__new__(worker_class)  # just what handle_error reads, without a master
    worker.cfg, worker.route_words = config, route_words(app)
    lines: list[str] = []

    class Log:
        def exception(self, message: str, *args: Any) -> None:
            lines.append(message % args)

        def access(self, *args: Any) -> None:
            pass

    worker.log = Log()
    server, client = socket.socketpair()
    with server, client:
        try:
            raise RuntimeError("an error no handler caught")
        except RuntimeError as exc:
            worker.handle_error(request, server, ("127.0.0.1", 1), exc)
        assert status_of(client.recv(65536)) == 500
    assert lines == ["Error handling request GET /password/reset/…"]


@pytest.mark.parametrize("worker", ["GeventWorker", "ThreadWorker"])
def test_a_request_line_gunicorn_cannot_parse_is_not_quoted(worker):
    """gunicorn's warning for a request it cannot parse quotes the request line, a token in its path included
    (nginx passes such paths on): the workers log and answer the error without it."""
    from gunicorn.config import Config
    from gunicorn.http.errors import InvalidRequestLine
    from gunicorn.http.parser import RequestParser

    from portal import serving

    worker_class = getattr(serving, worker)
    config = Config()
    source = iter([f"GET {TOKEN_PATH}\x7f HTTP/1.1\r\nHost: portal\r\n\r\n".encode()])  # DEL: not a URI
    with pytest.raises(InvalidRequestLine) as raised:
        next(RequestParser(config, source, ("127.0.0.1", 1)))
    assert TOKEN in str(raised.value)  # what gunicorn would have logged
    worker = worker_class.__new__(worker_class)
    worker.cfg, worker.route_words = config, frozenset()
    lines: list[str] = []

    class Log:
        def warning(self, message: str, *args: Any) -> None:
            lines.append(message % args if args else message)

        def access(self, *args: Any) -> None:
            pass

    worker.log = Log()
    server, client = socket.socketpair()
    with server, client:
        worker.handle_error(None, server, ("127.0.0.1", 1), raised.value)
        answer = client.recv(65536)
    assert status_of(answer) == 400 and TOKEN.encode() not in answer
    assert lines == ["Invalid request from ip=127.0.0.1: InvalidRequestLine (not quoted)"]


def test_a_deadline_that_is_not_a_number_of_seconds_stops_the_server_in_one_line(database_url):
    settings = {**os.environ, **SECRETS, "DATABASE_URL": database_url, "GUNICORN_REQUEST_READ_TIMEOUT": "10s"}
    result = subprocess.run(  # noqa: S603 - our own server, run with this interpreter
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env=settings,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: GUNICORN_REQUEST_READ_TIMEOUT must be a positive number of seconds, not '10s'"
    )


# --- through the compose file's nginx -------------------------------------------------------------------------


def limit_per_client() -> int:
    found = re.search(r"limit_conn per_client (\d+);", PROXY_CONFIG.read_text())
    assert found, "docs/deploy/nginx.conf limits connections per client address"
    return int(found.group(1))


def client_body_timeout() -> int:
    found = re.search(r"client_body_timeout (\d+)s;", PROXY_CONFIG.read_text())
    assert found
    return int(found.group(1))


@pytest.fixture(scope="module")
def proxied(app: Any, size: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """docs/deploy/nginx.conf in front of a gunicorn with the shipped settings that trusts it, as the compose
    file runs them; yields the proxy's base URL and gunicorn's log."""
    if gateway_binary("nginx") is None:
        pytest.skip(NGINX_MISSING)
    logs = tmp_path_factory.mktemp("proxied-portal")
    with (
        gunicorn(
            app.config["SQLALCHEMY_DATABASE_URI"],
            logs,
            API_KEY_PEPPER=app.config["API_KEY_PEPPER"],
            PORTAL_TRUST_PROXY="1",
        ) as portal,
        proxy(warmed_up(portal), tmp_path_factory.mktemp("proxy")) as base,
    ):
        yield base, logs / f"gunicorn-{portal.rsplit(':', 1)[1]}.log"


def test_a_slow_body_flood_does_not_keep_a_normal_client_out_of_the_proxy(proxied, size, flood):
    """The flood comes from many addresses, each under the proxy's limit per address: nginx holds every slow
    connection itself and closes them at its body timeout; gunicorn never waits for any of them."""
    base, gunicorn_log = proxied
    per_address = limit_per_client() // 2
    for group, n in enumerate(range(0, size, per_address)):
        source = f"127.0.{1 + group // 250}.{1 + group % 250}"
        flood.open(base, min(per_address, size - n), "/v1/keys/verify" if group % 2 else "/login", source=source)
    assert served(base, source="127.0.0.2") == (200, 401)
    assert flood.still_open() == len(flood.sockets)

    closed = flood.closed_by_server(within=client_body_timeout() + 20)
    assert len(closed) == len(flood.sockets), "nginx closes every slow connection"
    for received in closed.values():
        assert received == b"" or status_of(received) == 408, received[:200]
    assert served(base, source="127.0.0.2") == (200, 401)
    assert " 408 " not in gunicorn_log.read_text()


def test_one_address_over_its_limit_is_refused_at_once(proxied, flood):
    base, _ = proxied
    limit = limit_per_client()
    flood.open(base, limit + 5, "/v1/keys/verify", source="127.0.0.3")
    with selectors.DefaultSelector() as selector:
        for sock in flood.sockets:
            selector.register(sock, selectors.EVENT_READ)
        answered: list[Any] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while len(answered) < 5 and time.monotonic() < deadline:
            answered = selector.select(timeout=0.1)
    refused = [key.fileobj.recv(65536) for key, _ in answered]  # type: ignore[union-attr]
    assert [status_of(answer) for answer in refused] == [429] * 5
    assert json_body(refused[0])["error"]["code"] == "too_many_connections"
    for key, _ in answered:
        flood.sockets.remove(key.fileobj)  # type: ignore[arg-type]
        key.fileobj.close()  # type: ignore[union-attr]
    assert flood.still_open() == limit  # the others are still being read
    assert served(base, source="127.0.0.2") == (200, 401)


def settle_usage(org_id: Any, quiet: float = 0.6, longest: float = 15.0) -> None:
    """Wait until the server's usage writers stop adding rows for the organization (they flush every 0.2 s), so
    a row written after the clean-up cannot reach another test's counts."""
    seen, still_since, deadline = -1, time.monotonic(), time.monotonic() + longest
    while time.monotonic() < deadline:
        db.session.rollback()
        rows = db.session.scalar(sa.select(sa.func.count()).where(ApiKeyUsage.organization_id == org_id))
        if rows != seen:
            seen, still_since = rows, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return
        time.sleep(0.1)


@pytest.fixture
def fenced_key(app: Any) -> Iterator[str]:
    """A committed key that may only be used from 127.0.0.2; deleted with its organization afterwards."""
    org = factories.org()
    key = factories.api_key(org, None, name="fenced", key_policy=KeyPolicy(allowed_ips=["127.0.0.2/32"]))
    db.session.commit()
    yield key.plaintext
    settle_usage(org.id)
    db.session.execute(sa.delete(ApiKeyUsage).where(ApiKeyUsage.organization_id == org.id))
    db.session.execute(sa.text("DELETE FROM rate_limit_tracking WHERE organization_id = :o"), {"o": org.id})
    db.session.execute(sa.delete(Organization).where(Organization.id == org.id))
    db.session.commit()


def test_the_portal_sees_the_client_address_the_proxy_saw(proxied, fenced_key):
    """The proxy replaces X-Forwarded-For with the address it sees, and the portal trusts exactly that: a key
    fenced to 127.0.0.2 works from there alone, whatever a client claims."""
    base, _ = proxied
    host, port = base.removeprefix("http://").split(":")

    def check(source: str, forwarded: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {fenced_key}", "X-Original-URI": "/orders/7"}
        if forwarded:
            headers["X-Forwarded-For"] = forwarded
        connection = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT, source_address=(source, 0))
        try:
            connection.request("GET", "/v1/keys/verify/gateway", headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()

    assert check("127.0.0.2") == 200
    assert check("127.0.0.3") == 403
    assert check("127.0.0.3", forwarded="127.0.0.2") == 403  # a forged header is replaced, not believed


def test_v1_errors_from_the_proxy_are_json(tmp_path):
    """With gunicorn unreachable, /v1 clients get the API's 503 with Retry-After, in its JSON shape."""
    if gateway_binary("nginx") is None:
        pytest.skip(NGINX_MISSING)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: refused
        with proxy(nowhere, tmp_path) as base:
            host = base.removeprefix("http://")
            answer = raw_exchange(
                base,
                f"POST /v1/keys/verify HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(MALFORMED)}\r\n\r\n".encode()
                + MALFORMED,
            )
    head = answer.partition(b"\r\n\r\n")[0].decode().lower()
    assert status_of(answer) == 503
    assert "retry-after: 1" in head and "content-type: application/json" in head
    assert json_body(answer)["error"]["code"] == "unavailable"


# --- what the proxy logs -------------------------------------------------------------------------------------


def proxy_log_paths() -> dict[str, str]:
    """docs/deploy/nginx.conf's map from a path to what its access log shows: {regex: replacement}."""
    found = re.search(r"map \$uri \$portal_log_path \{(.*?)\}", PROXY_CONFIG.read_text(), flags=re.DOTALL)
    assert found, "docs/deploy/nginx.conf maps each path to what its access log shows"
    entries = re.findall(r'^\s*"~\*(.+?)"\s+"(.+?)";', found.group(1), flags=re.MULTILINE)
    assert entries
    return dict(entries)


def test_the_proxys_log_masks_every_route_with_a_token_in_its_path(app):
    """Every route whose path carries a token (a mailed one-time link) is masked by the access log's map, and
    logged as the route's own words followed by ``…``."""
    rules = [rule.rule for rule in app.url_map.iter_rules() if any("token" in name for name in rule.arguments)]
    assert {"/password/reset/<token>", "/verify-email/<token>", "/invite/<token>"} <= set(rules)
    masks = proxy_log_paths()
    for rule in rules:
        path = rule.replace("<token>", TOKEN)
        matches = [(match, value) for pattern, value in masks.items() if (match := re.match(pattern, path, re.I))]
        assert len(matches) == 1, rule
        match, value = matches[0]
        logged = re.sub(r"\$(\d)", lambda number: match.group(int(number.group(1))), value)  # noqa: B023
        assert logged == rule.split("<token>")[0] + "…", rule


def test_the_proxys_access_log_holds_no_token_query_string_or_referer(tmp_path):
    """Through docs/deploy/nginx.conf: a mailed link's path is logged up to its token, never a query string (a
    `next` can hold another link) nor the Referer (a reset page's assets send its address, token included)."""
    if gateway_binary("nginx") is None:
        pytest.skip(NGINX_MISSING)
    requests = {
        TOKEN_PATH: "/password/reset/…",
        f"/verify-email/{TOKEN}": "/verify-email/…",
        f"/account/email/confirm/{TOKEN}": "/account/email/confirm/…",
        f"//invite/{TOKEN}/": "/invite/…",  # nginx has merged the slashes
        f"/%69nvite/{TOKEN}": "/invite/…",  # and decoded the path
        f"/Invite/{TOKEN}": "/Invite/…",
        f"/login?next=/invite/{TOKEN}": "/login",
        f"/static/app.css?v={TOKEN}": "/static/app.css",
    }
    with echo_upstream() as upstream, proxy(upstream, tmp_path / "proxy") as base:
        host, port = base.removeprefix("http://").split(":")
        for path in requests:
            connection = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT)
            try:
                connection.request(
                    "GET",
                    path,
                    headers={"Referer": f"{base}/password/reset/{TOKEN}", "User-Agent": 'probe" 200 "forged'},
                )
                assert connection.getresponse().status == 200
            finally:
                connection.close()
        log_path = tmp_path / "proxy" / "nginx.log"
        deadline = time.monotonic() + 10
        while log_path.read_text().count("GET ") < len(requests) and time.monotonic() < deadline:
            time.sleep(0.05)
    log = log_path.read_text()
    lines = [line for line in log.splitlines() if "GET " in line]
    assert [re.search(r'"GET (\S+) HTTP/1\.1"', line).group(1) for line in lines] == list(requests.values())  # type: ignore[union-attr]
    assert TOKEN not in log and "?" not in log and "next" not in log
    assert all(' "probe\\" 200 \\"forged" ' in line and " 200 " in line for line in lines)
