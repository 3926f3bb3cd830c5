"""Engine and sessions.  SQLite (embedded default) and PostgreSQL through psycopg 3."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import psycopg
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Row,
    String,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    func,
    insert,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
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


# -- What differs between PostgreSQL and SQLite: chosen here, and only here ---------------------


def dialect_of(bind: Session | Connection | Engine | Dialect) -> Dialect:
    """The dialect of a session, a connection or an engine (or the dialect itself)."""
    if isinstance(bind, Dialect):
        return bind
    dialect = getattr(bind, "dialect", None)
    return dialect if dialect is not None else bind.get_bind().dialect


def one_of(
    bind: Session | Connection | Engine | Dialect,
    column: ColumnElement,
    ids: list[int] | None = None,
    *,
    key: str | None = None,
) -> ColumnElement[bool]:
    """``column`` is one of ``ids`` (whole numbers), or of the list given at execution as
    parameter ``key`` (for a statement built once).

    On PostgreSQL ``= ANY(array)``: one parameter however many ids, so the
    statement's text stays the same and psycopg prepares it once, where
    ``IN (...)`` sends one parameter per id and is parsed afresh at every new
    count (about 0.1 ms per message in the relay's claims of 200; bench/daily_peak.py).
    Elsewhere ``IN``.
    """
    if dialect_of(bind).name == "postgresql":
        return column == any_(bindparam(key, ids, type_=postgresql.ARRAY(BigInteger)))
    return column.in_(bindparam(key, ids, expanding=True))


def insert_many(
    executor: Session | Connection,
    table: Table,
    rows: list[dict],
    *,
    same: dict | None = None,
    returning: tuple[Column, ...] = (),
) -> list[Row]:
    """Insert many rows of ``table``: ``rows`` are dicts of column name to value, all with the
    same columns, and ``same`` the values every row shares.

    Returns the ``returning`` columns of each new row, in no particular order (return a
    column that names the row to match them).  On PostgreSQL this is one statement over the
    rows sent as one JSON document (``INSERT … SELECT … FROM json_to_recordset(…)``): a
    fixed, small statement that psycopg prepares once.  A multi-row ``INSERT … VALUES`` has
    a parameter per value (5,000 for a notice batch), which psycopg parses afresh every
    time, and arrays of text cost psycopg a regular expression per element to escape: each
    more than the rest of the batch (bench/daily_peak.py).  Elsewhere the rows go as
    SQLAlchemy's multi-row ``INSERT``.
    """
    if not rows:
        return []
    same = same or {}
    if dialect_of(executor).name != "postgresql":
        values = [{**row, **same} for row in rows]
        if not returning:
            executor.execute(insert(table), values)
            return []
        return executor.execute(insert(table).returning(*returning), values).all()
    statement = _insert_from_json(table, tuple(rows[0]), tuple(same), returning)
    parameters = {"rows": _json(rows), **{f"same_{name}": value for name, value in same.items()}}
    result = executor.execute(statement, parameters)
    return result.all() if returning else []


def update_by_id(executor: Session | Connection, table: Table, rows: list[dict], *, key: str = "id") -> None:
    """Set some columns of many rows of ``table``, each found by its ``id`` (or the column ``key``).

    ``rows`` are dicts of column name to value, all with the same columns, ``id`` (``key``)
    among them.  On PostgreSQL this is one statement, ``UPDATE … FROM unnest(arrays)``, one array
    per column: a fixed statement that psycopg prepares once, one round trip, and the
    server joins the rows in one scan.  For the relay's groups of 16 outcomes that is about
    half the server's time of an ``UPDATE`` per row, and half that of the same join over
    the rows as one JSON document (as :func:`insert_many` sends them).  Elsewhere, and for
    a single row, the ``UPDATE`` by id, executed once per row.
    """
    if not rows:
        return
    names = tuple(name for name in rows[0] if name != key)
    if len(rows) == 1 or dialect_of(executor).name != "postgresql":
        parameters = [{f"row_{name}": value for name, value in row.items()} for row in rows]
        executor.execute(_update_by_id(table, key, names), parameters)
        return
    arrays = {f"rows_{name}": [row[name] for row in rows] for name in (key, *names)}
    executor.execute(_update_from_arrays(table, key, names), arrays)


def _json(rows: list[dict]) -> str:
    """The rows as one JSON document: dates and times in ISO 8601, which PostgreSQL reads back."""
    return json.dumps(rows, default=_iso, ensure_ascii=False, separators=(",", ":"))


def _iso(value: object) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _type_of(table: Table, name: str):
    """The column's type for a value on its way in: Text, not the column's VARCHAR(n), whose cast
    would cut a longer value short, where the assignment to the column refuses it."""
    return Text() if isinstance(table.c[name].type, String) else table.c[name].type


def _rows_from_json(table: Table, names: tuple[str, ...]):
    """``json_to_recordset`` of the parameter ``rows``, as a table named ``given`` of these columns."""
    columns = (column(name, _type_of(table, name)) for name in names)
    return (
        func.json_to_recordset(cast(bindparam("rows", type_=Text()), JSON()))
        .table_valued(*columns)
        .render_derived(name="given", with_types=True)
    )


@functools.cache
def _insert_from_json(table: Table, names: tuple[str, ...], same: tuple[str, ...], returning: tuple[Column, ...]):
    given = _rows_from_json(table, names)
    shared = (bindparam(f"same_{name}", type_=table.c[name].type).label(name) for name in same)
    statement = insert(table).from_select([*names, *same], select(*(given.c[name] for name in names), *shared))
    return statement.returning(*returning) if returning else statement


@functools.cache
def _update_by_id(table: Table, key: str, names: tuple[str, ...]):
    values = {name: bindparam(f"row_{name}") for name in names}
    return update(table).where(table.c[key] == bindparam(f"row_{key}")).values(values)


@functools.cache
def _update_from_arrays(table: Table, key: str, names: tuple[str, ...]):
    columns = (key, *names)
    types = {name: _type_of(table, name) for name in columns}
    given = (
        func.unnest(*(bindparam(f"rows_{name}", type_=postgresql.ARRAY(types[name])) for name in columns))
        .table_valued(*(column(name, types[name]) for name in columns))
        .render_derived(name="given")
    )
    return update(table).where(table.c[key] == given.c[key]).values({name: given.c[name] for name in names})


@contextmanager
def quick_commit_connection(engine: Engine) -> Iterator[Connection]:
    """A pooled connection for small writes that are safe to lose in a crash of the database.

    Each write, up to the caller's ``connection.commit()``, is one transaction: all of it or
    none of it lands, also when the process is killed between its statements.  On
    PostgreSQL its commit does not wait for the disk (``synchronous_commit`` off): a crash
    of the server may forget the last commits, never half of one.
    """
    with engine.connect() as connection:
        if connection.dialect.name != "postgresql":
            yield connection
            return
        connection.execute(text("SET synchronous_commit TO OFF"))
        connection.commit()
        try:
            yield connection
        finally:
            # The pool hands this connection to other work next: give it its default back.
            try:
                connection.rollback()
                connection.execute(text("RESET synchronous_commit"))
                connection.commit()
            except Exception:
                connection.invalidate()


def dialect_insert(session_or_connection, table):
    """``INSERT`` with the dialect's ``ON CONFLICT`` support (PostgreSQL or SQLite)."""
    dialect = dialect_of(session_or_connection)
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
