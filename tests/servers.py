"""A real gunicorn with the shipped settings (gunicorn.conf.py: gevent workers) on a loopback port.

For tests that must see the production serving path: the worker class, its hooks and a clean stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port(ports: range = range(18150, 18200)) -> int:
    for port in ports:
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
    SIGTERM (the graceful stop during which workers flush their buffered usage rows) and wait for it."""
    port = free_port()
    settings = {
        **os.environ,
        "DATABASE_URL": database_url,
        **SECRETS,
        "PORTAL_ENV": "production",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "SIGNUP_MAX_PER_IP": "1000",  # every browser test signs up from 127.0.0.1
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
        try:
            deadline = time.monotonic() + 90  # generous: CI may be busy
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise AssertionError(log_path.read_text()) from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
