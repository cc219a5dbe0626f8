"""Write the development checkout's ``.env`` (``make dev`` runs this first): ``python -m portal.devenv``.

The ``flask`` CLI reads ``.env`` and ``.flaskenv`` by itself, so after ``make dev`` every command works from the
activated virtualenv with no extra variables, against the same database. The file is git-ignored and never part
of the Docker image; secrets are generated once per checkout and kept.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

HEADER = "# Development settings for this checkout, written by `make dev` (git-ignored; see .env.example).\n"


def render(database_url: str | None = None) -> str:
    lines = [
        HEADER,
        "PORTAL_ENV=development\n",
        f"SECRET_KEY={secrets.token_urlsafe(48)}\n",
        f"API_KEY_PEPPER={secrets.token_urlsafe(48)}\n",
    ]
    if database_url:
        lines.append(f"DATABASE_URL={database_url}\n")
    else:
        lines.append("# DATABASE_URL unset: the embedded PostgreSQL under instance/pgdata\n")
    return "".join(lines)


def ensure(path: Path, database_url: str | None = None) -> bool:
    """Write ``path`` unless it exists (its secrets stay); returns whether it was written."""
    if path.exists():
        return False
    path.write_text(render(database_url))
    path.chmod(0o600)
    return True


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if ensure(path, os.environ.get("DATABASE_URL")):
        print(f"wrote {path} (development settings and fresh development secrets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
