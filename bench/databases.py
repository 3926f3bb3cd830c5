"""The benchmarks' databases: their psycopg URL, and creating one on demand.

A benchmark empties or fills its database, so it only ever uses one whose
name contains ``bench``.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url


def psycopg_url(url: str, database: str | None = None) -> str:
    """``url`` (a SQLAlchemy URL) as psycopg takes it, optionally naming another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def ensure_database(url: str) -> None:
    """Create the database of ``url`` unless it exists; refuse a name without ``bench``."""
    name = make_url(url).database
    if "bench" not in (name or ""):
        raise SystemExit(f"{name!r}: a benchmark empties its database; its name must contain 'bench'")
    with psycopg.connect(psycopg_url(url, "postgres"), autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')
