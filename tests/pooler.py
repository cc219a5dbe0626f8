"""A real PgBouncer (Debian's ``pgbouncer``) in front of the test database server, for tests/test_pgbouncer.py.

It runs in the foreground on a loopback port, with ``auth_type = any`` and every database of the server offered
under its own name, logging in as the server URL's user (docs/operations.md, "Behind PgBouncer", has the
production settings). PgBouncer refuses to run as root, so as root it switches to the user who owns the
server's socket folder (the embedded server's) or to ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from tests.servers import free_port

PORTS = range(26100, 26200)
# Debian installs pgbouncer in /usr/sbin, which a non-root PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


def pgbouncer_binary() -> str | None:
    """Where the ``pgbouncer`` binary is, or None when it is not installed."""
    return shutil.which("pgbouncer", path=_SEARCH_PATH)


def _server_line(server_url: str) -> str:
    """The ``[databases]`` line that offers every database of the server at ``server_url`` as the URL's user."""
    url = sa.make_url(server_url)
    host = url.query.get("host") or url.host or "127.0.0.1"
    fields = {"host": host, "port": url.port or 5432, "user": url.username or "postgres"}
    if url.password:
        fields["password"] = url.password
    return "* = " + " ".join(f"{name}={value}" for name, value in fields.items())


def _run_as(server_url: str) -> list[str]:
    """``-u USER`` when this process is root (PgBouncer will not run as root), else nothing."""
    if os.geteuid() != 0:
        return []
    host = sa.make_url(server_url).query.get("host") or ""
    if isinstance(host, str) and host.startswith("/"):
        return ["-u", pwd.getpwuid(os.stat(host).st_uid).pw_name]
    return ["-u", "nobody"]


@contextmanager
def pgbouncer(server_url: str, pool_mode: str, work: Path, *, pool_size: int = 2) -> Iterator[int]:
    """PgBouncer in ``pool_mode`` with ``pool_size`` server connections per database; yields its port."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed")
    work.mkdir(parents=True, exist_ok=True)
    for _attempt in range(5):  # another server may take the free port first: then it tries another one
        process, port, log_path = _start(binary, server_url, pool_mode, work, pool_size)
        if process.poll() is None:
            break
    try:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer did not start:\n{log_path.read_text()}")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


def _start(
    binary: str, server_url: str, pool_mode: str, work: Path, pool_size: int
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start PgBouncer on a free port; back once it listens there or has exited."""
    port = free_port(PORTS)
    config = work / f"pgbouncer-{pool_mode}-{port}.ini"
    config.write_text(
        "[databases]\n"
        f"{_server_line(server_url)}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = any\npool_mode = {pool_mode}\n"
        f"default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 200\n"
        "server_round_robin = 0\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    log_path = work / f"pgbouncer-{pool_mode}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - Debian's pgbouncer with our own configuration
            [binary, *_run_as(server_url), str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while f"listening on 127.0.0.1:{port}" not in log_path.read_text() and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait(15)
            raise AssertionError(f"pgbouncer did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process, port, log_path


def through(url: str, port: int) -> str:
    """``url`` (a database of the test server) reached through the PgBouncer on ``port``."""
    parsed = sa.make_url(url)
    query = {name: value for name, value in parsed.query.items() if name != "host"}
    return parsed.set(host="127.0.0.1", port=port, password=None, query=query).render_as_string(hide_password=False)
