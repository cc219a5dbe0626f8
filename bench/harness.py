"""What the verification benchmark drives: PostgreSQL, gunicorn, wrk, and CPU accounting via /proc."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2

from tests.servers import session_nice

ROOT = Path(__file__).resolve().parent.parent
PORTS = range(18100, 18200)
# The PostgreSQL server both benchmarks create their throw-away database on (a superuser URL).
SERVER_URL_VARIABLE = "BENCH_DATABASE_URL"
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench_server_url() -> str:
    """``BENCH_DATABASE_URL``, else the PostgreSQL at 127.0.0.1:5432."""
    return os.environ.get(SERVER_URL_VARIABLE) or DEFAULT_SERVER_URL


def server_url() -> tuple[str, Any]:
    """A superuser URL on the benchmark server (:func:`bench_server_url`), or an embedded server in a
    temporary directory when none answers."""
    url = bench_server_url()
    try:
        psycopg2.connect(url, connect_timeout=3).close()
        return url, None
    except psycopg2.OperationalError:
        from portal.db import embedded_server_url

        tmp = tempfile.TemporaryDirectory(prefix="procode-bench-pg-")
        log("no PostgreSQL at 127.0.0.1:5432; using the embedded server")
        return embedded_server_url(Path(tmp.name) / "pgdata", database="postgres"), tmp


def with_db(url: str, name: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).set(database=name).set(drivername="postgresql").render_as_string(hide_password=False)


def admin(url: str, statement: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()


class Gunicorn:
    """gunicorn with the project's gunicorn.conf.py on a loopback port (18100-18199 unless told otherwise)."""

    def __init__(
        self,
        app: str,
        url: str,
        port: int,
        workers: int,
        threads: int,
        workdir: Path,
        pepper: str,
        worker_class: str = "gevent",
        extra_env: dict[str, str] | None = None,
        nice: int = 0,
    ) -> None:
        self.port = port
        self.log_path = workdir / f"gunicorn-{port}.log"
        self.secret_key = secrets.token_hex(16)  # to seal what the served app must unseal (webhook secrets)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "SECRET_KEY": self.secret_key,
            "API_KEY_PEPPER": pepper,
            "PORTAL_ENV": "production",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_WORKER_CLASS": worker_class,
            # Usage rows a stop during an outage could not write stay with the run, not in the checkout's instance
            # folder, where a development server would write them to its own database.
            "API_USAGE_SPILL_DIR": str(workdir / "usage-spill"),
            **(extra_env or {}),
        }
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            # `nice` lowers the whole process group's CPU priority (it execs gunicorn, so the pid stays the master's).
            [
                *(["nice", "-n", str(nice)] if nice else []),
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                app,
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=bool(nice),
        )
        try:
            if nice:  # and the session's, which is what counts against other sessions (tests/servers.py)
                session_nice(self.proc.pid, nice)
            deadline = time.monotonic() + 30
            while not self.ready():
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"gunicorn did not start:\n{self.log_path.read_text()}")
                time.sleep(0.2)
        except BaseException:
            self.proc.kill()  # in a session of its own, nothing else would stop it
            self.proc.wait()
            self.log_file.close()
            raise

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/openapi.json", timeout=1)  # noqa: S310
            return True
        except urllib.error.HTTPError:
            return True  # the constant app has no such route: it answers, so it is up
        except OSError:
            return False

    def worker_pids(self) -> list[str]:
        return Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()

    def worker_rss_mb(self) -> list[float]:
        sizes = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes

    def stop(self) -> None:
        """SIGTERM: the graceful stop during which workers flush their buffered usage rows."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log_file.close()


def wrk(
    port: int,
    keys: Path,
    endpoint: str,
    seconds: int,
    connections: int,
    delay_ms: int = 0,
    rate: float = 0,
    latency_file: Path | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """wrk with bench/verify.lua: as fast as ``connections`` go, each paced by ``delay_ms``, or at a fixed
    ``rate`` (calls/s on a schedule that does not wait for answers, latency counted from each call's due time;
    every call's latency in ``latency_file``, -1 for a call never answered). ``nice`` sets wrk's CPU priority."""
    threads = 2
    env = {**os.environ, "BENCH_KEYS": str(keys), "BENCH_ENDPOINT": endpoint, "BENCH_DELAY_MS": str(delay_ms)}
    if rate:
        env["BENCH_INTERVAL_US"] = f"{threads * 1e6 / rate:.3f}"
        if latency_file is not None:
            env["BENCH_LATENCY_FILE"] = str(latency_file)
    command = [
        *(["nice", "-n", str(nice)] if nice else []),
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(ROOT / "bench" / "verify.lua"),
        f"http://127.0.0.1:{port}",
    ]
    # With a priority, in a session of its own at that priority too (tests/servers.py: session_nice).
    proc = subprocess.Popen(  # noqa: S603 - our own benchmark client
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=bool(nice)
    )
    try:
        if nice:
            session_nice(proc.pid, nice)
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command, out, err)
    data = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH_JSON"))[len("BENCH_JSON") :])
    data["connections"] = connections
    if rate:
        # Answered calls of the schedule's window; a percentile that falls on a call never answered is infinite.
        data["rate"] = data["answered"] / (data["window_us"] / 1e6)
        for name in ("p50", "p90", "p99", "p999", "max"):
            data[f"{name}_ms"] = data[f"{name}_us"] / 1000 if data[f"{name}_us"] >= 0 else float("inf")
        return data
    data["rate"] = data["requests"] / (data["duration_us"] / 1e6)
    data["p50_ms"], data["p99_ms"] = data["p50_us"] / 1000, data["p99_us"] / 1000
    return data


def half_load(
    port: int,
    keys: Path,
    target: float,
    seconds: int,
    measure: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]] = lambda run: run(),
) -> dict[str, Any]:
    """wrk paced to ``target`` calls/s: each connection waits between calls (wrk's delay, whole ms),
    calibrated once so that wait + latency gives the target rate. ``measure`` wraps the measured run only
    (not the calibration), e.g. to count its CPU."""
    conns = 16
    delay = max(1, round(conns * 1000 / target))
    probe = wrk(port, keys, "/bench/probe", 3, conns, delay_ms=delay)
    latency_ms = conns * 1000 / probe["rate"] - delay  # what each call adds to the wait
    delay = max(1, round(conns * 1000 / target - latency_ms))
    return measure(lambda: wrk(port, keys, "/bench/half", seconds, conns, delay_ms=delay))


def exact_calls(port: int, keys: list[str], calls: int) -> int:
    """A client that knows exactly how many answers it received (wrk abandons in-flight calls at its end)."""
    import http.client

    def worker(share: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        answered = 0
        for i in range(share):
            key = keys[(i * 7919 + share) % len(keys)]
            body = json.dumps({"key": key, "endpoint": "/bench/exact", "scope": "translate:write", "client_ip": "::1"})
            conn.request("POST", "/v1/keys/verify", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
            answered += 1
        conn.close()
        return answered

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(worker, [calls // 8] * 8))


def free_ports(count: int, ports: range = PORTS) -> list[int]:
    import socket

    found = []
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise SystemExit(f"no free ports in {ports.start}-{ports.stop - 1}")


def cpu_seconds(pids: list[str]) -> float:
    """User + system CPU of these processes so far (less sensitive to a busy machine than calls/s)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids(url: str) -> list[str]:
    """The PostgreSQL server processes serving the benchmark database (the server is on this machine)."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        pids = [str(row[0]) for row in cur.fetchall()]
    conn.close()
    return pids


def with_cpu(
    run: Callable[[], dict[str, Any]], url: str, server: Gunicorn | None, pooler: list[str] | None = None
) -> dict[str, Any]:
    """Run ``run()`` (a wrk call) and add the app's and PostgreSQL's CPU microseconds per answered call (and the
    ``pooler`` processes', e.g. PgBouncer between them, as ``pooler_us``)."""
    workers = server.worker_pids() if server else []
    pg = backend_pids(url)
    each0, pg0, pooler0 = [cpu_seconds([pid]) for pid in workers], cpu_seconds(pg), cpu_seconds(pooler or [])
    result: dict[str, Any] = run()
    calls = max(1, result["requests"])
    each = [cpu_seconds([pid]) - before for pid, before in zip(workers, each0, strict=True)]
    result["app_us"] = sum(each) * 1e6 / calls
    # Backends that started during the run (a pooler opening server connections as load grows) count whole.
    started = sorted(set(backend_pids(url)) - set(pg))
    result["pg_us"] = (cpu_seconds(pg) - pg0 + cpu_seconds(started)) * 1e6 / calls
    result["pooler_us"] = (cpu_seconds(pooler or []) - pooler0) * 1e6 / calls
    # How the work fell on the workers: a keep-alive connection stays with the worker that accepted it.
    result["worker_share"] = [round(100 * e / sum(each)) for e in each] if sum(each) > 0 else []
    return result


def fmt(run: dict[str, Any]) -> str:
    return f"{run['rate']:8.0f}/s   p50 {run['p50_ms']:6.2f} ms   p99 {run['p99_ms']:6.2f} ms"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Browser:
    """Just enough of a browser: cookies and the sign-in form's CSRF token, over plain http.client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
        conn.close()
        return response.status, payload, elapsed

    def login(self, email: str, password: str) -> None:
        _, page, _ = self.request("GET", "/login")
        token = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page)
        if token is None:
            raise SystemExit("no CSRF token on the sign-in page")
        status, _, _ = self.request(
            "POST", "/login", {"email": email, "password": password, "csrf_token": token.group(1).decode()}
        )
        if status != 302:
            raise SystemExit(f"sign-in failed with {status}")
