"""Run a snippet of Python in a fresh interpreter (our own code, this interpreter) and read its JSON answer.

For what must not happen inside the test process: gevent's monkey-patching, or an import whose absence is
what the test checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, **env: str) -> Any:
    """Run ``code`` from the project root with only ``env`` (and PATH); it prints one JSON value last."""
    out = subprocess.run(  # noqa: S603 - our own code, run with this interpreter
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
