"""Engine and sessions.  SQLite (embedded default) and PostgreSQL through psycopg 3."""

from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import InvalidatePoolError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool


#: The database could not be reached: through SQLAlchemy, or on a psycopg connection used
#: directly.  Celery tasks retry on these.
DATABASE_UNREACHABLE = (OperationalError, psycopg.OperationalError)
#: The database cannot be used now: unreachable, or every connection of the pool busy past its
#: timeout.  The link handler answers these with a 503 page.
DATABASE_UNAVAILABLE = (*DATABASE_UNREACHABLE, PoolTimeout)


def make_engine(database_url: str, *, ping_after_idle: float | None = None, **kwargs) -> Engine:
    """An engine whose pooled connections are checked before use.

    By default (``ping_after_idle=None``) every checkout from the pool costs
    a ``SELECT 1`` round trip first (``pool_pre_ping``), so a connection the
    server dropped (a restart, an idle timeout) is replaced, not used.

    ``ping_after_idle=seconds`` pings only a connection that sat in the pool
    that long.  The link handler's pages are a round trip or two each, so a
    ping on every checkout was about a tenth of a page (bench/link_handler.sh);
    a connection given back a moment ago is as good as a ping would prove.  If
    the server restarts under load, a connection used just before is found dead
    by its first statement instead: psycopg's error is a disconnect to
    SQLAlchemy, which then replaces every connection of the pool, and the
    caller sees that one error (``DBAPIError.connection_invalidated``).
    SQLite has no server to drop a connection: it ignores ``ping_after_idle``.
    """
    if database_url.startswith("sqlite"):
        url = make_url(database_url)
        path = url.database
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not issubclass(url.get_dialect().get_pool_class(url), QueuePool):
            # In memory: one connection per thread (SingletonThreadPool), which takes no sizes.
            kwargs.pop("pool_size", None)
            kwargs.pop("max_overflow", None)
        engine = create_engine(database_url, connect_args={"timeout": 60}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # Let SQLAlchemy, not the driver, begin transactions (see "begin" below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            # BEGIN IMMEDIATE takes the write lock up front: two processes
            # serialise instead of failing to upgrade a read lock.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if ping_after_idle is None:
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(database_url, **kwargs)
    engine = create_engine(database_url, pool_pre_ping=False, **kwargs)
    _ping_after_idle(engine, ping_after_idle)
    return engine


def _ping_after_idle(engine: Engine, seconds: float) -> None:
    # SQLAlchemy's recipe for pessimistic disconnect handling through pool
    # events.  InvalidatePoolError at checkout is what pool_pre_ping raises on a
    # failed ping: the pool drops this connection and every older one (a dead
    # connection usually means the server restarted) and opens another.
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()  # cleared if the connection is invalidated

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy):
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < seconds:
            return  # just opened, or given back a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise InvalidatePoolError("a pooled connection failed its ping") from error


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back on error."""
    with factory() as session, session.begin():
        yield session


def dialect_insert(session_or_connection, table):
    """``INSERT`` with the dialect's ``ON CONFLICT`` support (PostgreSQL or SQLite)."""
    dialect = getattr(session_or_connection, "dialect", None) or session_or_connection.get_bind().dialect
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
