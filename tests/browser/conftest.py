"""Browser tests: real Chromium (Debian's, via Playwright) against the real server on loopback.

The server is gunicorn with the shipped settings (gevent workers, production config, CSRF on, argon2id at full
cost) on its own freshly migrated database, so the browser sees what a user of a deployment would; the
database is dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask_migrate import upgrade

from portal import create_app
from portal.extensions import db
from tests.conftest import drop_database, make_database
from tests.servers import gunicorn

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.concurrency)  # committed data: no rolled-back outer transaction


@pytest.fixture(scope="session")
def live_database(database_server: str) -> Iterator[str]:
    """The live server's database URL, for tests that prepare data the browser then sees."""
    url = make_database(database_server, "browser")
    app = create_app({"SQLALCHEMY_DATABASE_URI": url}, env="testing")
    with app.app_context():
        upgrade()
        db.engine.dispose()
    try:
        yield url
    finally:
        drop_database(database_server, url)


@pytest.fixture(scope="session")
def live_server(live_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs: Path = tmp_path_factory.mktemp("live-server")
    with gunicorn(live_database, logs, COOKIE_SECURE="false") as base:  # plain http on loopback
        yield base


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (make test installs Debian's chromium when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    yield page
    context.close()
