"""What every ``pec-renewal`` command shares: one-line failures, the runtime, the schema check, dates."""

from __future__ import annotations

import sys
from datetime import date
from typing import NoReturn

import click
import psycopg
from rich.console import Console
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.services.runtime import Runtime
from worker.store import migrate


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and exit ``code``: 2 for bad input, 1 for an operational failure."""
    click.echo(f"pec-renewal: {message}", err=True)
    sys.exit(code)


def database_lost(error: BaseException) -> str | None:
    """Why the database could not be used, if that is what ``error`` (or the error it was
    raised from, or while handling) comes down to; None for any other error.

    That is SQLAlchemy's ``OperationalError`` and ``InterfaceError`` (a refused or lost
    connection, a disconnect during a commit), any of its DBAPI errors that invalidated the
    connection, and psycopg's own two, raised where the driver's connection is used directly
    (the bulk load's ``COPY``).  Other database errors (a constraint, a bad statement) are
    bugs and keep their traceback.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and (
            isinstance(current, (OperationalError, InterfaceError)) or current.connection_invalidated
        ):
            cause = current.orig if current.orig is not None else current
            return " ".join(str(cause).split()) or type(cause).__name__
        if isinstance(current, (psycopg.OperationalError, psycopg.InterfaceError)):
            return " ".join(str(current).split()) or type(current).__name__
        current = current.__cause__ or current.__context__
    return None


def runtime_of(ctx: click.Context) -> Runtime:
    return ctx.find_root().obj


def ensure_schema(rt: Runtime) -> None:
    """The embedded SQLite database migrates itself; a server database must be upgraded on purpose."""
    head = migrate.head_revision()
    current = migrate.current_revision(rt.settings.database_url)
    if current == head:
        return
    if rt.settings.is_embedded:
        migrate.upgrade(rt.settings.database_url)
        return
    fail(f"the database is at revision {current or 'none'}, not {head}: run 'pec-renewal db upgrade' first")


def parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2027-03-31") from None


def stderr_console() -> Console:
    """Progress bars and tables for a person: on stderr, so stdout stays the command's answer."""
    return Console(stderr=True)
