"""gunicorn settings for the portal and the /v1 verification API (``gunicorn wsgi:app`` reads this file).

gthread workers keep client connections alive between requests (a sync worker closes each one, and a gateway
calling /v1/keys/verify on every request would pay a TCP handshake each time). Each thread owns one database
connection for verifications. The ``worker_exit`` hook flushes buffered usage rows when a worker stops.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# One process per core, several threads each: a verification mostly waits on PostgreSQL (the GIL is free
# then), and fewer processes mean fewer handoffs and less memory. Measured on 2 cores: 2 x 8 beat 4 x 4.
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, os.cpu_count() or 2))))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
keepalive = 30
graceful_timeout = 30


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """A stopping worker writes the usage rows still buffered (its answered calls) before it goes."""
    app = getattr(worker, "wsgi", None)  # the Flask app the worker loaded
    close = getattr(getattr(app, "extensions", {}).get("portal.verifier"), "close", None)
    if close is not None:
        close()
