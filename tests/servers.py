"""A real gunicorn with the shipped settings (gunicorn.conf.py: gevent workers) on a loopback port, the proxy
docker-compose.yml puts in front of it (Debian's nginx with docs/deploy/nginx.conf), and the gateways in front
of it (Debian's nginx and Caddy, configured from docs/gateways.md) with a tiny upstream.

For tests that must see the production serving path: the worker class, its hooks and a clean stop.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def session_nice(pid: int, nice: int) -> None:
    """Give the session ``pid`` leads the CPU priority ``nice`` (below 0 needs root). With the kernel's autogroup
    scheduling on (most distributions), a process's own nice value weighs only against processes of its session,
    and each session gets a fair share of the machine; the session's nice (``/proc/<pid>/autogroup``) is what
    puts it behind or ahead of the rest. Without autogroup there is nothing to do here: the processes' own nice
    values decide."""
    if os.getsid(pid) != pid:
        raise ValueError(f"process {pid} does not lead its session: its autogroup is shared with others")
    path = Path(f"/proc/{pid}/autogroup")
    if path.exists():
        path.write_text(str(nice))


def free_port(ports: range = range(18150, 18200)) -> int:
    """A port of ``ports`` that is free now, picked at random: test processes starting servers at the same
    time then rarely pick the same one."""
    for port in random.sample(ports, len(ports)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


# What the served app is configured with, so a test can prepare data (sealed secrets, key hashes) it accepts.
SECRETS = {"SECRET_KEY": "s" * 32, "API_KEY_PEPPER": "test-key-pepper-of-at-least-32-bytes"}


@contextmanager
def gunicorn(database_url: str, log_dir: Path, **env: str) -> Iterator[str]:
    """Serve ``wsgi:app`` in production mode on ``database_url`` and yield its base URL; on exit, stop it with
    SIGTERM (the graceful stop during which workers flush their buffered usage rows) and wait for it.

    Ready once its own log says it listens: a free port can be taken by another server (another test process on
    the machine) before gunicorn binds it, and that server would answer a plain connection; gunicorn then gives
    up, and it starts again on another port."""
    for _attempt in range(5):
        server, base, log_path = _start_gunicorn(database_url, log_dir, env)
        if base is not None:
            break
        if "Connection in use" not in log_path.read_text():
            raise AssertionError(log_path.read_text())
    else:
        raise AssertionError(log_path.read_text())
    try:
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def _start_gunicorn(
    database_url: str, log_dir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str | None, Path]:
    """Start gunicorn on a free port; its base URL once it listens there, or None if it exited first."""
    port = free_port()
    settings = {
        **os.environ,
        "DATABASE_URL": database_url,
        **SECRETS,
        "PORTAL_ENV": "production",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "SIGNUP_MAX_PER_IP": "1000",  # every browser test signs up from 127.0.0.1
        # Spill files of this server only: another test's server, on another database, never replays them.
        "API_USAGE_SPILL_DIR": str(log_dir / "usage-spill"),
        # Passkeys need a host name (not an IP address) as relying party: browsers use http://localhost:<port>.
        "PUBLIC_BASE_URL": f"http://localhost:{port}",
        **env,
    }
    log_path = log_dir / f"gunicorn-{port}.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(  # noqa: S603 - our own server, run with this interpreter
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=settings,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    listening = f"Listening at: http://127.0.0.1:{port} ({server.pid})"
    deadline = time.monotonic() + 90  # generous: CI may be busy
    while listening not in log_path.read_text():
        if server.poll() is not None:
            return server, None, log_path
        if time.monotonic() > deadline:
            server.kill()
            server.wait(60)
            raise AssertionError(log_path.read_text())
        time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}", log_path


# --- Gateways in front of the portal (docs/gateways.md) -------------------------------------------------------

GATEWAYS_DOC = ROOT / "docs" / "gateways.md"
# The addresses the documented configurations use, replaced by the test's own.
DOC_GATEWAY_PORT, DOC_PORTAL, DOC_UPSTREAM = "8080", "127.0.0.1:8000", "127.0.0.1:9000"
GATEWAY_PORTS = range(18200, 18260)
# Debian installs nginx in /usr/sbin, which a non-root PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


def gateway_binary(name: str) -> str | None:
    """Where the ``nginx`` or ``caddy`` binary is, or None when it is not installed."""
    return shutil.which(name, path=_SEARCH_PATH)


def documented_config(language: str, gateway_port: int, portal: str, upstream: str) -> str:
    """The one fenced ``language`` block of docs/gateways.md with this test's addresses in place of the doc's."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", GATEWAYS_DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    if len(blocks) != 1:
        raise AssertionError(f"docs/gateways.md must have exactly one ```{language} block, has {len(blocks)}")
    config: str = blocks[0]
    for documented, actual in ((DOC_PORTAL, portal), (DOC_UPSTREAM, upstream)):
        if documented not in config:
            raise AssertionError(f"the ```{language} block no longer names {documented}")
        config = config.replace(documented, actual)
    return re.sub(rf"(?<!\d){DOC_GATEWAY_PORT}(?!\d)", str(gateway_port), config)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path, pid_file: Path | None = None) -> None:
    """Until ``port`` takes connections; with ``pid_file`` (nginx writes it once its sockets are bound), not
    before it names ``process``, so another server that took the port first is never mistaken for this one."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if pid_file is not None and pid_file.read_text().strip() != str(process.pid):
                raise OSError("not written yet")
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(log_path.read_text()) from None
            time.sleep(0.05)


@contextmanager
def _foreground(
    command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None, pid_file: Path | None = None
) -> Iterator[str]:
    """Run a server in the foreground (no daemon), yield its base URL once it listens, then stop it."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
        try:
            _wait_for_port(port, process, log_path, pid_file)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)


@contextmanager
def nginx(portal: str, upstream: str, work: Path) -> Iterator[str]:
    """Debian's nginx with the documented ``server`` block, inside the smallest main configuration."""
    port = free_port(GATEWAY_PORTS)
    work.mkdir(parents=True, exist_ok=True)
    site = documented_config("nginx", port, portal.removeprefix("http://"), upstream.removeprefix("http://"))
    temp = "\n".join(
        f"    {kind}_temp_path {work / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\nerror_log {work / 'error.log'} warn;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    access_log off;\n{temp}\n{site}}}\n"
    )
    with _foreground(_nginx_command(work), port, work / "stdout.log", pid_file=work / "nginx.pid") as base:
        yield base


def _nginx_command(work: Path, *extra: str) -> list[str]:
    """Debian's nginx with ``work`` as its prefix, ``work/nginx.conf`` and its error log there."""
    binary = gateway_binary("nginx") or "nginx"
    return [binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log"), *extra]


@contextmanager
def caddy(portal: str, upstream: str, work: Path) -> Iterator[str]:
    """Debian's Caddy with the documented site block; no admin endpoint, no automatic HTTPS, state under ``work``."""
    port = free_port(GATEWAY_PORTS)
    work.mkdir(parents=True, exist_ok=True)
    site = documented_config("caddyfile", port, portal.removeprefix("http://"), upstream.removeprefix("http://"))
    (work / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + site)
    env = {**os.environ, "XDG_DATA_HOME": str(work / "data"), "XDG_CONFIG_HOME": str(work / "config")}
    command = [gateway_binary("caddy") or "caddy", "run", "--config", str(work / "Caddyfile"), "--adapter", "caddyfile"]
    with _foreground(command, port, work / "caddy.log", env) as base:
        yield base


# --- The compose file's reverse proxy (docs/deploy/nginx.conf) -------------------------------------------------

PROXY_CONFIG = ROOT / "docs" / "deploy" / "nginx.conf"
# What the shipped file listens on and proxies to inside docker compose, replaced by the test's own addresses.
DOC_PROXY_LISTEN, DOC_PROXY_UPSTREAM, DOC_PROXY_API = "listen 80;", "server web:8000", "server api:8000"


def shipped_proxy_config(port: int, portal: str, work: Path, api: str | None = None) -> str:
    """docs/deploy/nginx.conf listening on 127.0.0.1:``port`` in front of ``portal`` (host:port) and, for
    ``/v1``, ``api`` (else ``portal`` too), with its temporary files under ``work`` (Debian's defaults are root's)."""
    config = PROXY_CONFIG.read_text()
    temp = "".join(
        f"    {kind}_temp_path {work / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    replacements = (
        (DOC_PROXY_LISTEN, f"listen 127.0.0.1:{port};"),
        (DOC_PROXY_UPSTREAM, f"server {portal}"),
        (DOC_PROXY_API, f"server {api or portal}"),
        ("\nhttp {\n", "\nhttp {\n" + temp),
    )
    for documented, actual in replacements:
        if config.count(documented) != 1:
            raise AssertionError(f"docs/deploy/nginx.conf must name {documented.strip()!r} exactly once")
        config = config.replace(documented, actual)
    return config


@contextmanager
def proxy(portal: str, work: Path, port: int | None = None, api: str | None = None) -> Iterator[str]:
    """Debian's nginx running docs/deploy/nginx.conf in front of ``portal`` (and of ``api`` for ``/v1``, else
    ``portal`` answers it too), on ``port``, else a free one of ``GATEWAY_PORTS``; yields the proxy's base URL.
    bench/faults.py runs it too."""
    port = port if port is not None else free_port(GATEWAY_PORTS)
    work.mkdir(parents=True, exist_ok=True)
    api_address = api.removeprefix("http://") if api else None
    (work / "nginx.conf").write_text(shipped_proxy_config(port, portal.removeprefix("http://"), work, api_address))
    command = _nginx_command(work, "-g", f"daemon off; pid {work / 'nginx.pid'};")
    with _foreground(command, port, work / "nginx.log", pid_file=work / "nginx.pid") as base:
        yield base


class _Echo(http.server.BaseHTTPRequestHandler):
    """An upstream API: answers every call with the method, path and headers it received, as JSON."""

    def _answer(self) -> None:
        body = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass


@contextmanager
def echo_upstream() -> Iterator[str]:
    """A tiny upstream in a thread of this process; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
