"""Bulk loading: many rows into a table in one transaction, on every database.

:func:`bulk_writer` is the one place where an import's writes depend on the
database.  Every database gets :class:`BulkWriter`: rows inserted with
SQLAlchemy's ``executemany``, and nothing else to do.  PostgreSQL gets
:class:`PostgresqlBulkWriter`, which adds what SQLAlchemy does not express
and a million rows need there:

- ``COPY … FROM STDIN`` instead of the inserts (:func:`copy_into`: the only
  statement sent on the driver's own cursor, as SQLAlchemy has no COPY).  In
  bench/import.py at 200,000 rows, staging the file took 21-22 s with
  SQLAlchemy's ``executemany`` (psycopg's pipelined inserts) and 1.2-1.7 s
  with COPY; the whole import 30-33 s against 10-13 s;
- ``SET LOCAL work_mem``, so that sorts over a whole file stay in memory;
- ``ANALYZE`` of tables the transaction has just filled, so that the planner
  does not take them for empty;
- which rows an upsert inserted, from the system column ``xmax``, where
  other databases read the keys first;
- the bulk load into an empty fleet (:class:`BulkLoad`): the secondary
  indexes and foreign keys of ``mailboxes``, ``mailbox_schedule`` and
  ``holders`` dropped for the load and built again once, as PostgreSQL's "Populating a Database" advises.

Those statements are text: ``SET``, ``ANALYZE``, ``LOCK TABLE`` and
``COPY`` have no SQLAlchemy construct, and :class:`BulkLoad` rebuilds each
index and constraint from the definition PostgreSQL itself prints for it
(``pg_get_indexdef``, ``pg_get_constraintdef``), read from the catalog just
before the drop: what is rebuilt is exactly what was there (partial
predicates, operator classes, ``ON DELETE`` actions, deferrability), which a
round trip through reflected SQLAlchemy objects would not promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Insert,
    Select,
    Table,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from worker.store.models import Holder, Mailbox, MailboxSchedule

#: The tables the bulk load into an empty fleet fills without their secondary indexes and foreign keys.
FLEET_TABLES = (Mailbox.__table__, MailboxSchedule.__table__, Holder.__table__)
#: Kept through the bulk load: the unique constraint an import's ``ON CONFLICT`` on holders names.
KEPT = frozenset({"uq_holders_account_id"})
#: The unique constraint on ``mailboxes.address``: the bulk load builds it first, and it refuses an address twice.
UNIQUE_ADDRESS = "uq_mailboxes_address"
#: PostgreSQL's ``work_mem`` while an import runs: sorts and hashes over a whole file spill to disk
#: with the default 4 MB.  The server's memory, for this transaction only.
WORK_MEM = "64MB"
#: PostgreSQL's ``maintenance_work_mem`` while the bulk load builds the indexes again.
MAINTENANCE_WORK_MEM = "256MB"

#: In an upsert's ``RETURNING`` on PostgreSQL: whether the statement inserted the row.
_INSERTED = literal_column("xmax = 0", Boolean)

#: How a staged value (text: dates as YYYY-MM-DD, booleans as 1 and 0) is read, by the column's
#: Python type; text as it is.
_TEXT_READERS: dict[type, Callable[[str], Any]] = {int: int, date: date.fromisoformat, bool: "1".__eq__}

#: A phase timer: ``with timed("name"): ...``.
Timed = Callable[[str], AbstractContextManager[Any]]

StagedRow = tuple[str, ...]


def untimed(phase: str) -> AbstractContextManager[None]:
    return nullcontext()


class BulkWriter:
    """Bulk writes with SQLAlchemy alone, which any database takes: SQLite's."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def encode(self, row: StagedRow) -> Any:
        """``row`` (text values, an empty string for an absent one) as :meth:`pack` takes it."""
        return row

    def pack(self, rows: list[Any]) -> Any:
        """Rows from :meth:`encode` as :meth:`load` takes them (the caller drops ``rows``)."""
        return rows

    def load(self, target: Table, rows: Any) -> None:
        """Insert ``rows`` (from :meth:`pack`) into ``target``, whose columns they give in order."""
        readers = [(column.key, _TEXT_READERS.get(column.type.python_type)) for column in target.columns]
        self.connection.execute(
            insert(target),
            [
                {
                    name: (read(value) if read else value) if value else None
                    for (name, read), value in zip(readers, row, strict=True)
                }
                for row in rows
            ],
        )

    def upsert(self, statement: Insert, key: ColumnElement[Any], existing: Select[Any]) -> list[tuple[bool, Any]]:
        """Run ``statement`` (an ``INSERT … ON CONFLICT``); ``(inserted, key)`` for each row it wrote.

        ``existing``: the keys of the rows the statement may update, read
        first: nothing else tells a row it inserted from one it updated here.
        """
        before = set(self.connection.execute(existing).scalars())
        return [(value not in before, value) for value in self.connection.execute(statement.returning(key)).scalars()]

    def use_memory(self) -> None:
        """Give the transaction's sorts and hashes the memory a whole file needs (nothing to do here)."""

    def analyze(self, *targets: Table, columns: Sequence[str] = ()) -> None:
        """Refresh the planner's statistics of ``targets`` (of their ``columns`` only, if given): nothing to do here."""

    def start_bulk_load(self) -> BulkLoad | None:
        """Drop what a load into an empty fleet does without; None: not on this database."""
        return None


class PostgresqlBulkWriter(BulkWriter):
    """PostgreSQL: ``COPY``, ``work_mem``, ``ANALYZE`` and the bulk load into an empty fleet."""

    def encode(self, row: StagedRow) -> str:
        """A row in COPY's text format, where an empty field is NULL.

        A staged value never contains a tab or a line break (any control
        character refuses the row), so only backslashes need escaping.
        """
        text = "\t".join(row)
        if "\\" in text:
            text = "\t".join(value.replace("\\", "\\\\") for value in row)
        return text

    def pack(self, rows: list[Any]) -> str:
        """The lines of COPY's text format, as one string: more compact than the list, while it waits."""
        rows.append("")
        return "\n".join(rows)

    def load(self, target: Table, rows: Any) -> None:
        copy_into(self.connection, target, [rows], options="FORMAT text, NULL ''")

    def upsert(self, statement: Insert, key: ColumnElement[Any], existing: Select[Any]) -> list[tuple[bool, Any]]:
        # A row the statement inserted has no xmax; an updated one has this transaction's.  Cheaper
        # than looking the keys up first.
        return [(inserted, value) for inserted, value in self.connection.execute(statement.returning(_INSERTED, key))]

    def use_memory(self) -> None:
        self.connection.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")

    def analyze(self, *targets: Table, columns: Sequence[str] = ()) -> None:
        quote = self.connection.dialect.identifier_preparer.quote
        names = f" ({', '.join(quote(name) for name in columns)})" if columns else ""
        self.connection.exec_driver_sql(f"ANALYZE {', '.join(quote(target.name) + names for target in targets)}")

    def start_bulk_load(self) -> BulkLoad | None:
        return BulkLoad.start(self.connection)


def bulk_writer(connection: Connection) -> BulkWriter:
    """The bulk writer for ``connection``'s database."""
    if connection.dialect.name == "postgresql":
        return PostgresqlBulkWriter(connection)
    return BulkWriter(connection)


def copy_into(
    connection: Connection,
    target: Table,
    data: Iterable[str | bytes],
    *,
    columns: Sequence[str] | None = None,
    options: str = "FORMAT text",
) -> None:
    """PostgreSQL's ``COPY target (columns) FROM STDIN (options)``, fed ``data`` block by block, in
    ``connection``'s transaction.  ``columns``: all of ``target``'s, in order, by default."""
    quote = connection.dialect.identifier_preparer.quote
    names = ", ".join(quote(name) for name in (target.columns.keys() if columns is None else columns))
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    statement = f"COPY {quote(target.name)} ({names}) FROM STDIN ({options})"
    with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for block in data:
            copy.write(block)


def violated_constraint(error: IntegrityError) -> str | None:
    """The name of the constraint a PostgreSQL integrity error is about (None if it names none)."""
    return getattr(getattr(error.orig, "diag", None), "constraint_name", None)


# PostgreSQL's catalog, as far as the bulk load reads it.
_pg_constraint = table(
    "pg_constraint", column("oid"), column("conname"), column("contype"), column("conrelid"), column("conindid")
)
_pg_index = table("pg_index", column("indexrelid"), column("indrelid"))
_pg_class = table("pg_class", column("oid"), column("relname"))


@dataclass
class BulkLoad:
    """The indexes and constraints dropped for a load into an empty fleet, to be rebuilt exactly.

    PostgreSQL's own advice for populating a database: writing a million
    rows into ``mailboxes`` with its indexes and foreign keys live costs
    far more than building them once at the end.  The definitions are read
    from the live catalog just before they are dropped, so what is rebuilt
    is what was there.  All of it is DDL inside the caller's transaction: a
    rollback (a refused file, any failure) restores the drops with the rows.
    """

    #: ``(table, name, definition)``: plain indexes (``CREATE INDEX …``).
    indexes: list[tuple[str, str, str]]
    #: ``(table, name, kind, definition)``: ``u`` unique and ``f`` foreign-key constraints.
    constraints: list[tuple[str, str, str, str]]

    @classmethod
    def start(cls, connection: Connection) -> BulkLoad | None:
        """Drop what the load does not need if ``mailboxes`` is empty; None (nothing done) otherwise.

        Everything of :data:`FLEET_TABLES` but the primary keys and the
        constraints :data:`KEPT`.  ``DROP INDEX`` and ``ALTER TABLE`` take an
        ``ACCESS EXCLUSIVE`` lock on ``mailboxes`` and ``holders`` (and a lesser
        one on the tables the foreign keys refer to) until the transaction
        ends: the daily scan and the link pages wait for it.  On an empty
        fleet there is nothing for them to read.
        """
        if _has_mailboxes(connection):
            return None
        quote = connection.dialect.identifier_preparer.quote
        connection.exec_driver_sql(
            f"LOCK TABLE {', '.join(quote(target.name) for target in FLEET_TABLES)} IN ACCESS EXCLUSIVE MODE"
        )
        # Another import may have filled the fleet before the lock was granted.
        if _has_mailboxes(connection):
            return None
        indexes: list[tuple[str, str, str]] = []
        constraints: list[tuple[str, str, str, str]] = []
        for target in FLEET_TABLES:
            constraints.extend(
                (target.name, name, kind, definition)
                for name, kind, definition in connection.execute(_constraints_of(target.name))
                if name not in KEPT
            )
            indexes.extend(
                (target.name, name, definition) for name, definition in connection.execute(_indexes_of(target.name))
            )
        # Foreign keys first: a unique constraint may be what one refers to.
        for table_name, name, _kind, _ in sorted(constraints, key=lambda item: item[2] != "f"):
            connection.exec_driver_sql(f"ALTER TABLE {quote(table_name)} DROP CONSTRAINT {quote(name)}")
        for _, name, _ in indexes:
            connection.exec_driver_sql(f"DROP INDEX {quote(name)}")
        return cls(indexes, constraints)

    def rebuild(self, connection: Connection, timed: Timed = untimed) -> None:
        """Create again every index and constraint dropped, with its name and definition.

        Unique constraints first (one of them may refuse the rows:
        ``IntegrityError``, see :func:`violated_constraint`), then the plain
        indexes, then the foreign keys.
        """
        quote = connection.dialect.identifier_preparer.quote
        connection.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        constraints = sorted(self.constraints, key=lambda item: item[2] == "f")
        for table_name, name, kind, definition in constraints:
            if kind != "f":
                with timed(f"rebuild {name}"):
                    connection.exec_driver_sql(
                        f"ALTER TABLE {quote(table_name)} ADD CONSTRAINT {quote(name)} {definition}"
                    )
        for _, name, definition in self.indexes:
            with timed(f"rebuild {name}"):
                connection.exec_driver_sql(definition)
        for table_name, name, kind, definition in constraints:
            if kind == "f":
                with timed(f"rebuild {name}"):
                    connection.exec_driver_sql(
                        f"ALTER TABLE {quote(table_name)} ADD CONSTRAINT {quote(name)} {definition}"
                    )


def _has_mailboxes(connection: Connection) -> bool:
    return connection.execute(select(exists().select_from(Mailbox.__table__))).scalar_one()


def _regclass(table_name: str):
    return cast(literal(table_name), REGCLASS)


def _constraints_of(table_name: str):
    """The unique and foreign-key constraints of a table: name, kind, definition."""
    constraint = _pg_constraint.c
    return (
        select(constraint.conname, constraint.contype, func.pg_get_constraintdef(constraint.oid))
        .where(constraint.conrelid == _regclass(table_name), constraint.contype.in_(("u", "f")))
        .order_by(constraint.conname)
    )


def _indexes_of(table_name: str):
    """The indexes of a table that are no constraint's (primary key, unique, exclusion): name, definition."""
    index, relation, constraint = _pg_index.c, _pg_class.c, _pg_constraint.c
    a_constraints = (
        exists()
        .where(constraint.conrelid == index.indrelid, constraint.conindid == index.indexrelid)
        .where(constraint.contype.in_(("p", "u", "x")))
    )
    return (
        select(relation.relname, func.pg_get_indexdef(relation.oid))
        .select_from(_pg_index.join(_pg_class, relation.oid == index.indexrelid))
        .where(index.indrelid == _regclass(table_name), ~a_constraints)
        .order_by(relation.relname)
    )
