"""Outbox messages in any state, written as the queue writer and the relay leave them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, update

from worker.store.models import OutboxMessage, OutboxQueueEntry, OutboxStatus


def outbox_message(
    *, status: str = OutboxStatus.PENDING.value, next_attempt_at: datetime | None = None, **columns: Any
):
    """A message with its row in ``outbox_queue`` while it is pending (due at ``next_attempt_at``)
    or failed, none once sent or bounced, as :mod:`worker.mail.queue` and the relay write them."""
    message = OutboxMessage(status=status, next_attempt_at=next_attempt_at, **columns)
    if status == OutboxStatus.PENDING.value:
        message.queue = OutboxQueueEntry(next_attempt_at=next_attempt_at, failed=False)
    elif status == OutboxStatus.FAILED.value:
        message.queue = OutboxQueueEntry(next_attempt_at=None, failed=True)
    return message


def mark(session, ids: list[int], status: str, **columns: Any) -> None:
    """Give messages already queued an outcome, with their queue rows as the relay leaves them:
    pending or failed has its row (pending due at ``next_attempt_at``), sent or bounced none."""
    session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(status=status, **columns))
    queue = OutboxQueueEntry.__table__
    rows = queue.c.outbox_message_id.in_(ids)
    session.execute(delete(queue).where(rows))  # then written anew: a sent message has none left
    if status in (OutboxStatus.PENDING.value, OutboxStatus.FAILED.value):
        failed = status == OutboxStatus.FAILED.value
        due = None if failed else columns.get("next_attempt_at")
        session.execute(
            insert(queue), [{"outbox_message_id": id_, "next_attempt_at": due, "failed": failed} for id_ in ids]
        )
