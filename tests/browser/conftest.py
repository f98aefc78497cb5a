"""Browser tests: Playwright driving Debian's Chromium against pytest-django's live server.

One browser and one live server for the whole run (both session-scoped); each test gets a fresh
browser context. Screenshots of every page land in $SCREENSHOT_DIR (default var/screenshots).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "var" / "screenshots"))
PASSWORD = "correct horse battery staple"


def pytest_collection_modifyitems(items):
    """Browser tests run last: once Playwright's loop runs in the main thread it stays for the
    session, and the rest of the suite should not run beside it (see allow_orm_beside_playwright)."""
    browser = [item for item in items if "tests/browser/" in str(item.fspath)]
    for item in browser:
        item.add_marker(pytest.mark.browser)
    items[:] = [item for item in items if item not in browser] + browser


@pytest.fixture(scope="session", autouse=True)
def allow_orm_beside_playwright():
    """Playwright's sync API keeps an asyncio loop in the main thread; Django would refuse ORM
    calls from test bodies (and the live server's flush) as "async-unsafe". Set only from the
    first browser test on, never for the subprocesses of the tests before."""
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run bin/services-for-tests (apt-get install chromium)")
    # Root in a container: Chromium's sandbox needs namespaces it cannot have here.
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--no-sandbox", "--disable-dev-shm-usage"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 800}, "locale": "en-GB"}


@pytest.fixture
def as_user(live_server, context):
    """Log a user in by handing the browser a session cookie (the login form has its own test)."""
    from django.conf import settings
    from django.test import Client

    def login(user):
        client = Client()
        client.force_login(user)
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                              "url": live_server.url}])
        return user

    return login


def check(page, name: str, *, dark: bool = True) -> None:
    """Axe-core finds no serious or critical violation (light and dark themes); a screenshot of
    the page in each theme goes to SCREENSHOTS."""
    from axe_playwright_python.sync_playwright import Axe

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    axe = Axe()
    for scheme in ("light", "dark") if dark else ("light",):
        page.emulate_media(color_scheme=scheme)
        results = axe.run(page)
        bad = [f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
               for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert bad == [], f"{name} ({scheme}): {bad}"
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def worker(*args: str, tmp_path: Path, lancedb: Path, **env) -> subprocess.Popen:
    """A real worker process (`manage.py ARGS`) on the live server's database, graph and vectors."""
    from django.conf import settings
    from django.db import connection

    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DATABASE_", "PYTEST", "VECTOR_", "DJANGO_ALLOW"))}
    environment.update(
        DJANGO_SETTINGS_MODULE="nightingale.settings", DATA_DIR=str(settings.DATA_DIR),
        DATABASE_URL=f"sqlite:///{connection.settings_dict['NAME']}", LANCEDB_DIR=str(lancedb),
        PINECONE_INDEX="test", NEO4J_URI=settings.NEO4J_URI, NEO4J_PASSWORD=settings.NEO4J_PASSWORD,
        SYNC_KICK_DRAIN="false", OBSERVE_BESIDE_CAPTURE="false", HF_HUB_OFFLINE="1", **env)
    log = open(tmp_path / f"{args[0]}.log", "w")  # noqa: SIM115 — closed with the process
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
