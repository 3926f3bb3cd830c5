"""Shared fixtures: a real PostgreSQL database, migrated once, emptied before each test.

The server is the one on 127.0.0.1:5432 (``.ci/run`` starts it if it is down);
``PEC_RENEWAL_TEST_DATABASE_URL`` points the tests at another one.
"""

from __future__ import annotations

import os

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from config.settings import Settings
from tests.smtp_server import smtp_server  # noqa: F401
from worker.services.runtime import Runtime
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Base

#: Fixtures defined beside the test data they go with.
pytest_plugins = ["tests.support.importing"]

TEST_DATABASE_URL = os.environ.get(
    "PEC_RENEWAL_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/pec_renewal_test"
)
TEST_REDIS_URL = os.environ.get("PEC_RENEWAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_SECRET_KEYS = "test-key-old-0123456789abcdef0123456789,test-key-new-0123456789abcdef0123456789"


def _ensure_database(url: str) -> None:
    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{parsed.database}"')


@pytest.fixture(scope="session")
def database_url() -> str:
    _ensure_database(TEST_DATABASE_URL)
    engine = make_engine(TEST_DATABASE_URL)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    migrate.upgrade(TEST_DATABASE_URL)
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine):
    """A session factory on an emptied database.  Code under test commits for real."""
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return make_session_factory(engine)


def make_settings(tmp_path, **overrides) -> Settings:
    environ = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test",
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
    }
    environ.update({f"PEC_RENEWAL_{key.upper()}": str(value) for key, value in overrides.items()})
    return Settings.from_env(environ)


def smtp_runtime(tmp_path, database_url, session_factory, smtp, **overrides) -> Runtime:
    """A Runtime on the emptied test database that mails to ``smtp`` (the loopback server); the caller closes it."""
    settings = make_settings(
        tmp_path, database_url=database_url, mail_backend="smtp", smtp_host=smtp.host, smtp_port=smtp.port,
        **overrides,
    )  # fmt: skip
    runtime = Runtime(settings)
    runtime.session_factory = session_factory
    return runtime


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return make_settings(tmp_path, database_url=database_url)
