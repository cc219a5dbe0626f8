"""Malformed requests for the fault matrix (bench/faults.py): broken HTTP, broken bodies, hostile values.

Each is sent on a new connection and the answer's status read; a 5xx to any of them is a failure (the server
must refuse bad input with a 4xx, or close the connection).
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

VERIFY = "/v1/keys/verify"


def _post(path: str, body: bytes, kind: str = "application/json", extra: str = "") -> Callable[[str], bytes]:
    def build(host: str) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
        return (head + extra + "Connection: close\r\n\r\n").encode() + body

    return build


def _raw(data: bytes) -> Callable[[str], bytes]:
    return lambda _host: data


def _get(path: str, extra: str = "") -> Callable[[str], bytes]:
    return lambda host: f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def _key(value: object, **more: object) -> bytes:
    return json.dumps({"key": value, "endpoint": "/f/malformed", **more}).encode()


# name -> how to build the bytes for a host:port
MALFORMED: dict[str, Callable[[str], bytes]] = {
    "binary garbage": _raw(bytes(range(256)) * 4),
    "TLS ClientHello": _raw(bytes.fromhex("16030100a5010000a10303") + b"\x00" * 160),
    "HTTP/2 preface": _raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    "no version": _raw(b"GET /\r\n\r\n"),
    "unknown method": _raw(b"BREW /v1/keys/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    "bad header line": _raw(b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\nConnection: close\r\n\r\n"),
    "header too long": lambda host: _get("/login", f"X-Big: {'a' * 20000}\r\n")(host),
    "too many headers": lambda host: _get("/login", "".join(f"X-H{i}: v\r\n" for i in range(200)))(host),
    "request line too long": lambda host: _get("/" + "a" * 9000)(host),
    "bad content-length": _raw(b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"),
    "negative content-length": _raw(b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}"),
    "two content-lengths": _raw(
        b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    ),
    "bad chunk size": _raw(
        b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    ),
    "chunked and length": _raw(
        b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n"
        b"Connection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    ),
    "NUL in path": _raw(b"GET /lo\x00gin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    "bad percent-encoding": _get("/orgs/%ff%fe%/keys?q=%zz"),
    "not JSON": _post(VERIFY, b"{not json"),
    "JSON array": _post(VERIFY, b"[1, 2, 3]"),
    "deeply nested JSON": _post(VERIFY, b"[" * 5000 + b"]" * 5000),
    "huge number": _post(VERIFY, b'{"key": 1' + b"0" * 5000 + b"}"),
    "key not a string": _post(VERIFY, _key({"a": 1})),
    "key too long": _post(VERIFY, _key("pk_live_" + "a" * 5000)),
    "control characters": _post(VERIFY, _key("pk_live_\x1b[31m\n")),
    "invalid UTF-8": _post(VERIFY, b'{"key": "\xff\xfe\xfd"}'),
    "non-ASCII endpoint": _post(VERIFY, _key("pk_live_x", endpoint="/caf\u00e9")),
    "bad scope and address": _post(VERIFY, _key("pk_live_x", scope="root:*", client_ip="999.1.1.1")),
    "form instead of JSON": _post(VERIFY, b"key=pk_live_x", "application/x-www-form-urlencoded"),
    "bad bearer": _post(VERIFY, b"{}", extra="Authorization: Basic Zm9vOmJhcg==\r\n"),
    "body over the limit": _post(VERIFY, b'{"key": "' + b"a" * 40000 + b'"}'),
    "gateway without credential": _get("/v1/keys/verify/gateway", "Authorization: Bearer \u00e9\r\n"),
    "sign-in without CSRF": _post("/login", b"email=a%40b.c&password=x", "application/x-www-form-urlencoded"),
    "unknown page": _get("/../../etc/passwd"),
}


def _exchange(host: str, port: int, data: bytes, timeout: float) -> str:
    """Send ``data`` on a new connection; the answer's status, or ``none`` when closed without one."""
    received = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while len(received) < 64 and (chunk := sock.recv(4096)):
                received += chunk
    except OSError:
        pass
    if received.startswith(b"HTTP/") and len(received.split(b" ", 2)) > 2:
        return received.split(b" ", 2)[1].decode(errors="replace")
    return "none"


def send_malformed(
    host: str, port: int, count: int, *, parallel: int = 8, timeout: float = 15.0
) -> dict[str, Counter[str]]:
    """``count`` malformed requests, the kinds in turn, ``parallel`` at a time: the statuses by kind."""
    kinds = list(MALFORMED.items())
    jobs = [kinds[i % len(kinds)] for i in range(count)]
    address = f"{host}:{port}"
    with ThreadPoolExecutor(parallel) as pool:
        statuses = pool.map(lambda job: _exchange(host, port, job[1](address), timeout), jobs)
        found: dict[str, Counter[str]] = {}
        for (name, _), status in zip(jobs, statuses, strict=True):
            found.setdefault(name, Counter())[status] += 1
    return found
