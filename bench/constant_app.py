"""Ceiling (b) of the verification benchmark: a Flask route answering constant JSON, nothing else.

Served with the portal's gunicorn settings: ``gunicorn -c gunicorn.conf.py bench.constant_app:app``.
"""

from __future__ import annotations

from flask import Flask, Response

app = Flask(__name__)
BODY = b'{"valid":true,"key_id":"00000000-0000-0000-0000-000000000000","environment":"test"}'


@app.post("/v1/keys/verify")
def verify() -> Response:
    return Response(BODY, 200, mimetype="application/json")
