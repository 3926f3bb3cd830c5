"""Shared fixtures: a real PostgreSQL database, migrated once, emptied before each test.

The server is the one on 127.0.0.1:5432 (``.ci/run`` starts it if it is down);
``PEC_RENEWAL_TEST_DATABASE_URL`` points the tests at another one.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from config.settings import Settings
from tests.support.settings import TEST_DATABASE_URL, make_settings
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Base

#: Fixtures defined beside the test data they go with.
pytest_plugins = [
    "tests.support.smtp_server",
    "tests.support.importing",
    "tests.support.charges",
    "tests.support.invoices",
    "tests.support.link_handler",
    "tests.support.faults",
    "tests.support.gateway_fixtures",
]


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


#: A table larger than this on disk is emptied with TRUNCATE, whose cost does not grow with its
#: rows; a smaller one with DELETE, which for a few rows costs a fraction of TRUNCATE's new files.
TRUNCATE_FROM_BYTES = 1 << 20

#: Every id sequence that has handed out a value, back to its start.
_RESTART_SEQUENCES = text(
    "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, start_value, false)"
    " FROM pg_sequences WHERE schemaname = current_schema() AND last_value IS NOT NULL"
)


@pytest.fixture(scope="session")
def empty_database(engine):
    """Empties every table and restarts every id sequence, touching only the tables that hold rows:
    one query finds them (with their size), then each is deleted from or truncated."""
    tables = Base.metadata.sorted_tables
    quoted = {table.name: '"' + table.name + '"' for table in tables}
    holding_rows = text(
        " UNION ALL ".join(
            f"SELECT '{name}', pg_relation_size('{quoted[name]}') WHERE EXISTS (SELECT FROM {quoted[name]})"
            for name in quoted
        )
    )

    def empty() -> None:
        with engine.begin() as connection:
            sizes = dict(connection.execute(holding_rows).all())
            large = [name for name, size in sizes.items() if size > TRUNCATE_FROM_BYTES]
            if large:
                connection.execute(text(f"TRUNCATE {', '.join(quoted[name] for name in large)} CASCADE"))
            for table in reversed(tables):  # the rows that refer to others first
                if table.name in sizes and table.name not in large:
                    connection.execute(table.delete())
            connection.execute(_RESTART_SEQUENCES)

    return empty


@pytest.fixture
def session_factory(engine, empty_database):
    """A session factory on an emptied database.  Code under test commits for real."""
    empty_database()
    return make_session_factory(engine)


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return make_settings(tmp_path, database_url=database_url)
