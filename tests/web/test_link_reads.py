"""How the link page reads the database: one statement in autocommit, and a dead connection survived.

A link page is what every holder opens from a notice, so it is the web app's
hot path (bench/link_handler.sh).  A mailbox link is read in one SELECT on a
connection in autocommit (no BEGIN, no ROLLBACK); the link handler's engine
pings a pooled connection only after it sat idle, and a GET that meets a
connection the server dropped is read again on a fresh one.
"""

from __future__ import annotations

from datetime import date

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tests.support.factories import make_mailbox
from tests.support.link_handler import link_path
from worker.services.runtime import Runtime
from worker.store.db import make_engine
from worker.web import PING_AFTER_IDLE_SECONDS, WebRuntime, create_app

EXPIRY = date(2027, 2, 10)  # the clock stands at 2027-01-10


def _terminate(database_url: str, pid: int) -> None:
    """Drop one server connection from the server's side, as a restart does."""
    plain = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


@pytest.fixture
def mailbox_path(runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, address="anna@pec.provider.example.it")
        session.commit()
        return link_path(runtime, mailbox)


class _RecordingCursor(psycopg.Cursor):
    """A real psycopg cursor that notes each statement, and whether its connection was in autocommit."""

    statements: list = []

    def execute(self, query, params=None, **kwargs):
        type(self).statements.append((str(query), self.connection.autocommit))
        return super().execute(query, params, **kwargs)


def test_a_mailbox_link_page_is_one_statement_in_autocommit(runtime, settings, mailbox_path):
    # Its own engine, so every connection (and the cursor the link read keeps on it) records.
    engine = make_engine(settings.database_url, ping_after_idle=PING_AFTER_IDLE_SECONDS)
    event.listen(
        engine,
        "connect",
        lambda dbapi_connection, _record: setattr(dbapi_connection, "cursor_factory", _RecordingCursor),
    )
    runtime.__dict__["engine"] = engine
    try:
        client = create_app(runtime).test_client()
        for _ in range(2):  # a new connection, then the same one from the pool
            _RecordingCursor.statements.clear()
            response = client.get(mailbox_path)
            assert response.status_code == 200
            assert "anna@pec.provider.example.it" in response.get_data(as_text=True)
            assert len(_RecordingCursor.statements) == 1, _RecordingCursor.statements
            statement, autocommit = _RecordingCursor.statements[0]
            assert autocommit is True  # no BEGIN and no ROLLBACK around it
            assert "holders" in statement and "renewal_orders" in statement  # the holder and the order, joined
        with engine.connect() as connection:  # the pool's connections are back to transactions
            assert connection.connection.dbapi_connection.autocommit is False
            assert connection.connection.dbapi_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        engine.dispose()


def test_the_web_runtime_pings_only_idle_connections(settings):
    web, other = WebRuntime(settings), Runtime(settings)
    try:
        assert web.engine.pool._pre_ping is False and PING_AFTER_IDLE_SECONDS > 0  # no SELECT 1 before every page
        assert other.engine.pool._pre_ping is True  # the CLI and the Celery workers keep it
    finally:
        web.close()
        other.close()


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(database_url):
    engine = make_engine(database_url, ping_after_idle=0)  # every pooled connection counts as idle
    try:
        pid = _backend_pid(engine)
        _terminate(database_url, pid)
        with engine.connect() as connection:  # the ping fails at checkout: a fresh connection
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged_and_the_pool_recovers(database_url):
    engine = make_engine(database_url, ping_after_idle=3600)
    try:
        pid = _backend_pid(engine)
        _terminate(database_url, pid)
        with pytest.raises(DBAPIError) as raised, engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert raised.value.connection_invalidated  # SQLAlchemy saw a disconnect and dropped the pool
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_a_link_page_survives_a_connection_the_server_dropped(runtime, settings, mailbox_path):
    engine = make_engine(settings.database_url, ping_after_idle=3600)  # no ping: the GET must cope
    runtime.__dict__["engine"] = engine
    try:
        client = create_app(runtime).test_client()
        assert client.get(mailbox_path).status_code == 200
        _terminate(settings.database_url, _backend_pid(engine))
        response = client.get(mailbox_path)
        assert response.status_code == 200
        assert "anna@pec.provider.example.it" in response.get_data(as_text=True)
    finally:
        engine.dispose()
