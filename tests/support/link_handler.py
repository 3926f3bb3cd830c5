"""The link handler under test: a Runtime on the test database with a clock the test moves, the Flask
app and its test client, and what the web and security tests read from pages (CSRF tokens, link
paths, security headers, row counts).

Registered as a plugin in ``tests/conftest.py``: its fixtures are ``clock``, ``link_runtime``,
``app``, ``client`` and ``make_app``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from tests.support.settings import make_settings
from worker.services.runtime import Runtime
from worker.store.models import Base
from worker.web import create_app

ROME = ZoneInfo("Europe/Rome")
_CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


class Clock:
    """A frozen clock: ``clock.today = date(...)`` moves it to noon of that day in Rome."""

    def __init__(self, today: date):
        self.now = datetime.combine(today, time(12), ROME).astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    @property
    def today(self) -> date:
        return self.now.astimezone(ROME).date()

    @today.setter
    def today(self, day: date) -> None:
        self.now = datetime.combine(day, time(12), ROME).astimezone(UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(date(2027, 1, 10))


def runtime_on_test_database(settings, session_factory, clock) -> Runtime:
    """A Runtime for ``settings`` on the test database (emptied for this test), with the test's clock."""
    rt = Runtime(settings, clock=clock)
    rt.__dict__["session_factory"] = session_factory
    rt.__dict__["engine"] = session_factory.kw["bind"]
    return rt


def close_runtime(rt: Runtime) -> None:
    rt.__dict__.pop("engine")  # shared by the session: not ours to dispose
    rt.close()


@pytest.fixture
def link_runtime(settings, session_factory, clock):
    """The link handler's Runtime on the test database; ``tests/web`` and ``tests/security`` call it ``runtime``."""
    rt = runtime_on_test_database(settings, session_factory, clock)
    yield rt
    close_runtime(rt)


@pytest.fixture
def app(link_runtime):
    return create_app(link_runtime)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_app(tmp_path, database_url, session_factory, clock):
    """``make_app(secret_keys="k1,k2", base_url=...)``: an app on the test database with other settings."""
    runtimes = []

    def build(**overrides):
        built = runtime_on_test_database(
            make_settings(tmp_path, database_url=database_url, **overrides), session_factory, clock
        )
        runtimes.append(built)
        return create_app(built)

    yield build
    for built in runtimes:
        close_runtime(built)


def csrf_token(html: str) -> str:
    match = _CSRF_RE.search(html)
    assert match, "no csrf_token in the page"
    return match.group(1) or match.group(2)


def row_counts(session_factory) -> dict[str, int]:
    with session_factory() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) for table in Base.metadata.sorted_tables
        }


def link_path(runtime, mailbox) -> str:
    return "/rinnova/" + runtime.signer.renewal_token("m", mailbox.id, mailbox.expires_on)


def account_link_path(runtime, account_id: int, expires_on: date) -> str:
    return "/rinnova/" + runtime.signer.renewal_token("a", account_id, expires_on)


EXPECTED_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def assert_security_headers(response, *, no_store: bool = True) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, name
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "script-src" not in csp  # no script at all
    if no_store:
        assert response.headers["Cache-Control"] == "no-store"
