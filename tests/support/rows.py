"""Rows counted and compared: a model's rows in a session, every row of every table (a request changed none)."""

from __future__ import annotations

from sqlalchemy import func, select

from worker.store.models import Base


def count(session, model) -> int:
    """How many rows of ``model`` the session sees."""
    return session.scalar(select(func.count()).select_from(model))


def every_row(session_factory) -> dict[str, list[tuple]]:
    """Each table's rows, whole and in key order: two snapshots are equal only if no row was
    inserted, deleted or changed in between."""
    with session_factory() as session:
        return {
            table.name: [
                tuple(row) for row in session.execute(select(table).order_by(*table.primary_key.columns)).all()
            ]
            for table in Base.metadata.sorted_tables
        }
