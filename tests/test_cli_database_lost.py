"""Which errors the CLI reports as "cannot use the database" (one line, exit 1), from real failures.

The fault test (tests/faults/test_database_lost_mid_delivery.py) cuts a real connection in the
middle of a delivery; here each kind of error is produced for real and classified: a lost
or refused connection, through SQLAlchemy or through psycopg directly, also when another
error was raised while handling it; a constraint or a bug is not the database going away,
and keeps its traceback.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from worker.cli.common import database_lost
from worker.store.db import make_engine

NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def raised(action) -> BaseException:
    try:
        action()
    except BaseException as error:  # the error itself is what is looked at
        return error
    raise AssertionError("nothing was raised")


def connect_through_sqlalchemy() -> None:
    engine = make_engine(NOWHERE)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def connect_through_psycopg() -> None:
    psycopg.connect("host=127.0.0.1 port=1 user=postgres connect_timeout=5").close()


def raise_while_handling_a_lost_connection() -> None:
    try:
        connect_through_psycopg()
    except psycopg.OperationalError:
        raise RuntimeError("the batch stopped")  # noqa: B904  (raised while handling, as a cleanup might)


def kill_own_connection(database_url: str) -> None:
    """The server ends this session (as a restart or a failover does), then it is used again."""
    engine = make_engine(database_url, ping_after_idle=3600)
    try:
        with engine.connect() as connection:
            with make_engine(database_url).connect() as other:
                pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "action",
    [connect_through_sqlalchemy, connect_through_psycopg, raise_while_handling_a_lost_connection],
    ids=["sqlalchemy", "psycopg", "raised-while-handling"],
)
def test_a_refused_connection_is_the_database_lost(action):
    reason = database_lost(raised(action))
    assert reason is not None and "\n" not in reason
    assert "port 1 failed: Connection refused" in reason


def test_a_connection_ended_by_the_server_is_the_database_lost(database_url):
    reason = database_lost(raised(lambda: kill_own_connection(database_url)))
    assert reason is not None and "\n" not in reason


def test_a_constraint_or_a_bug_is_not(session_factory):
    def duplicate_key() -> None:
        with session_factory() as session, session.begin():
            session.execute(text("INSERT INTO worker_state (key, value) VALUES ('k', '1'), ('k', '2')"))

    error = raised(duplicate_key)
    assert isinstance(error, IntegrityError)
    assert database_lost(error) is None
    assert database_lost(raised(lambda: int("x"))) is None
