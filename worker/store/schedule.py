"""Moving mailboxes' next dates in ``mailbox_schedule``, the scan's narrow table.

The notice batch, the schedule's reconciliation and the charge work move many
dates at once through :func:`move_schedule`; the ORM's single mailboxes move
theirs through ``Mailbox.next_action_on``, and the import writes them set-based
from its staging table.  None of them writes a ``mailboxes`` row for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from worker.store.db import update_by_id
from worker.store.models import MailboxSchedule

SCHEDULE = MailboxSchedule.__table__


def move_schedule(executor: Session | Connection, moves: Iterable[tuple[int, date | None]]) -> None:
    """Set each ``(mailbox id, next date)``'s next date (None: never again), in one statement on PostgreSQL."""
    update_by_id(
        executor,
        SCHEDULE,
        [{"mailbox_id": mailbox_id, "next_action_on": on} for mailbox_id, on in moves],
        key="mailbox_id",
    )
