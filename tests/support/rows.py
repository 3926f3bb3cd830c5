"""Every row of every table, to prove that a request changed none."""

from __future__ import annotations

from sqlalchemy import select

from worker.store.models import Base


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
