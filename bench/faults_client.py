"""The fault matrix's clients (bench/faults.py): a counting load whose every call is traceable to its usage row, a
probe that connects afresh for each call, and floods of idle or slow connections.

Every verification carries a unique marker as its ``endpoint`` (``/f/<scenario>/<client>/<n>``), which the
usage row stores as given, so rows lost or written twice are counted exactly against the answers received.
"""

from __future__ import annotations

import http.client
import json
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# The address every traced call names as its client: allowed by the benchmark keys' allowlist
# (bench/verify.py), and never the source of invalid keys, so no budget of invalid keys (docs/operations.md)
# ever answers a traced call 429 without a row.
TRACED_CLIENT_IP = "10.0.0.7"
# Answers to a key that exists: each of these promises exactly one usage row (README, "Exact rate limits").
ROW_CODES = frozenset({"revoked", "expired", "forbidden", "rate_limited", "quota_exceeded"})
CALL_TIMEOUT = 60.0  # seconds a client waits for an answer: longer than any wait the matrix means to measure


@dataclass(slots=True)
class Call:
    """One attempt: its marker, when it was sent (its first attempt, for a retry) and what came back."""

    marker: str
    sent: float
    answered: float | None = None
    status: int | None = None
    promised: bool = False  # an answer that promises a usage row
    # No answer: ``refused``, ``closed``, ``timeout``, or ``dropped`` (a kept-alive connection closed without an
    # answer, retried at once on a new connection, as HTTP clients do).
    error: str | None = None

    @property
    def wait(self) -> float | None:
        return None if self.answered is None else self.answered - self.sent


def verification(key: str, marker: str) -> bytes:
    return json.dumps(
        {"key": key, "endpoint": marker, "scope": "translate:write", "client_ip": TRACED_CLIENT_IP}
    ).encode()


def promises_row(status: int, body: bytes) -> bool:
    """A 200, or the refusal of an existing key (its JSON ``code``), is one usage row."""
    if status == 200:
        return True
    if status not in (401, 403, 429):
        return False
    try:
        return json.loads(body).get("code") in ROW_CODES
    except (ValueError, AttributeError):
        return False


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return "closed"


class _Connection:
    """A keep-alive HTTP/1.1 connection that makes one traced verification at a time."""

    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = CALL_TIMEOUT) -> None:
        self.host, self.port, self.source, self.timeout = host, port, source, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.calls = 0  # calls made on the current connection

    def call(self, key: str, marker: str, sent: float | None = None) -> Call:
        call = Call(marker, time.monotonic() if sent is None else sent)
        reused = self.conn is not None and self.calls > 0
        try:
            if self.conn is None:
                source = None if self.source is None else (self.source, 0)
                self.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout, source_address=source
                )
                self.calls = 0
            self.calls += 1
            self.conn.request(
                "POST", "/v1/keys/verify", verification(key, marker), {"Content-Type": "application/json"}
            )
            response = self.conn.getresponse()
            body = response.read()
            call.answered, call.status = time.monotonic(), response.status
            call.promised = promises_row(response.status, body)
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            call.error = _error_kind(exc)
            if reused and call.error == "closed":
                call.error = "dropped"
            self.close()
        return call

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


class Load:
    """``clients`` keep-alive clients in threads, together ``rate`` traced calls a second, until :meth:`stop`.

    Each client keeps its own schedule and never bursts to catch up after a long wait. A call whose kept-alive
    connection the server had closed is retried at once on a new connection (as HTTP clients do) under a new
    marker; the retry's wait counts from the first attempt.
    """

    def __init__(
        self,
        host: str,
        port: int,
        keys: Sequence[str],
        tag: str,
        *,
        clients: int = 32,
        rate: float = 280.0,
    ) -> None:
        self.host, self.port, self.keys, self.tag = host, port, list(keys), tag
        self.clients, self.interval = clients, clients / rate
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 5)
        return self.calls

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        connection = _Connection(self.host, self.port)
        next_at = time.monotonic() + rng.uniform(0, self.interval)
        seq = 0
        while not self._stop.is_set():
            pause = next_at - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                break
            next_at = max(next_at + self.interval, time.monotonic())
            key = self.keys[rng.randrange(len(self.keys))]
            first: float | None = None
            for _attempt in range(2):
                seq += 1
                call = connection.call(key, f"/f/{self.tag}/c{n:02d}/{seq:06d}", first)
                self.calls.append(call)
                if call.error != "dropped":
                    break
                first = call.sent
            if call.error in ("refused", "closed"):
                self._stop.wait(0.05)  # the server is down or going: do not spin
        connection.close()


class Probe:
    """A new client every ``every`` seconds: one traced call on a new connection (it must find room)."""

    def __init__(self, host: str, port: int, keys: Sequence[str], tag: str, every: float = 0.25) -> None:
        self.host, self.port, self.keys, self.tag, self.every = host, port, list(keys), tag, every
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT + 5)
        return self.calls

    def _run(self) -> None:
        seq = 0
        while not self._stop.wait(self.every):
            seq += 1
            connection = _Connection(self.host, self.port)
            self.calls.append(connection.call(self.keys[seq % len(self.keys)], f"/f/{self.tag}/probe/{seq:06d}"))
            connection.close()


@dataclass
class Flood:
    """Many connections held open by this process; a watcher thread notes when the server closes each one."""

    sockets: list[socket.socket] = field(default_factory=list)
    closed_at: dict[int, float] = field(default_factory=dict)  # by file descriptor
    answers: dict[int, bytes] = field(default_factory=dict)  # what the server sent before closing
    opened: float = 0.0
    failed: int = 0  # connections that could not even be opened
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    def open(self, host: str, port: int, count: int, payload: Callable[[int], bytes], sources: Sequence[str]) -> None:
        """Open ``count`` connections (round robin over the ``sources`` addresses), send each its
        ``payload(i)`` (nothing for idle ones), and start watching them."""
        for i in range(count):
            try:
                sock = socket.create_connection((host, port), timeout=5, source_address=(sources[i % len(sources)], 0))
                data = payload(i)
                if data:
                    sock.sendall(data)
            except OSError:
                self.failed += 1
                continue
            sock.setblocking(False)
            self.sockets.append(sock)
        self.opened = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        with selectors.DefaultSelector() as selector:
            for each in self.sockets:
                selector.register(each, selectors.EVENT_READ, each)
            open_count = len(self.sockets)
            while open_count and not self._stop.is_set():
                for key, _ in selector.select(timeout=0.1):
                    sock: socket.socket = key.data
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        self.answers[sock.fileno()] = self.answers.get(sock.fileno(), b"") + data
                        continue
                    self.closed_at[sock.fileno()] = time.monotonic()
                    selector.unregister(sock)
                    open_count -= 1

    def still_open(self) -> int:
        return len(self.sockets) - len(self.closed_at)

    def statuses(self) -> dict[str, int]:
        """What the closed connections were answered: ``408`` etc., or ``none`` (closed without a word)."""
        found: dict[str, int] = {}
        for fd in self.closed_at:
            answer = self.answers.get(fd, b"")
            parts = answer.split(b" ", 2)
            status = parts[1].decode() if answer.startswith(b"HTTP/") and len(parts) > 1 else "none"
            found[status] = found.get(status, 0) + 1
        return found

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for sock in self.sockets:
            sock.close()


def slow_body(host: str, port: int) -> Callable[[int], bytes]:
    """Headers announcing 100 bytes of body, then 7 of them: a slow upload that stalls."""

    def payload(i: int) -> bytes:
        path = "/v1/keys/verify" if i % 2 else "/login"
        kind = "application/json" if i % 2 else "application/x-www-form-urlencoded"
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\nContent-Length: 100\r\n\r\n"
        return head.encode() + (b'{"key":' if i % 2 else b"email=a")

    return payload


def idle(_i: int) -> bytes:
    return b""
