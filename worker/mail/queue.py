"""The outbox queue: the one writer of outbox rows.

Every email is first a row of ``outbox_messages``, written in the transaction
of the work it reports (a notice and its ledger rows, a charge, an order), so
it exists exactly when that work was committed; the relay
(:mod:`worker.mail.outbox`) renders and sends it afterwards.  The row keeps the
data to render, never the rendered text.

Its Message-ID is :func:`worker.mail.message_ids.message_id_for` of what the email is
about (the ledger keys it carries, or an :class:`~worker.mail.message_ids.OrderEmail`),
with this installation's id: the same email written twice gets the same
Message-ID, and the outbox holds each Message-ID once.

With the message, in the same statement's transaction, its row in
``outbox_queue``: the narrow row the relay claims and leases, deleted once the
message is sent or bounced.  The wide message row is written once more, by its
outcome, and that update is HOT (no index names a column it changes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from worker.mail.message_ids import LedgerKey, OrderEmail, installation_id, message_id_for
from worker.store.db import dialect_insert, insert_many
from worker.store.models import OutboxMessage, OutboxQueueEntry, OutboxStatus

_OUTBOX = OutboxMessage.__table__
_SET_CONTEXT = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("outbox_id")).values(context=bindparam("new_context"))
_QUEUE = OutboxQueueEntry.__table__
#: The kinds whose messages may be withdrawn before they are sent (:func:`withdraw_emails`); the
#: relay reads such a message's status again just before sending it.
WITHDRAWABLE_KINDS = frozenset({"order-confirmation"})


@dataclass(frozen=True)
class NewEmail:
    """An email to queue: what it is about (which gives its Message-ID), and what it says."""

    #: The ledger keys it carries, each ``(mailbox_id, cycle_expires_on_iso, stage)``, or an order's email.
    about: Sequence[LedgerKey] | OrderEmail
    kind: str
    stage: str
    language: str
    to_address: str
    context: dict = field(default_factory=dict)
    #: 0 for the email itself; a counter or a nonce for a deliberate re-send as a new message.
    resend: int | str = 0


@dataclass(frozen=True)
class QueuedEmail:
    id: int
    message_id: str


def queue_email(
    executor: Session | Connection, email: NewEmail, *, mail_domain: str, business_date: date, now: datetime
) -> QueuedEmail | None:
    """Queue one email in the caller's transaction.

    Returns None, and writes nothing, when the outbox already holds an email
    with its Message-ID (the same email, queued before).
    """
    message_id = message_id_for(
        email.about, mail_domain, installation_id=installation_id(executor), resend=email.resend
    )
    outbox_id = executor.execute(
        dialect_insert(executor, _OUTBOX)
        .values({**_row(email, message_id), **_new(business_date, now)})
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(_OUTBOX.c.id)
    ).scalar()
    if outbox_id is None:
        return None
    executor.execute(insert(_QUEUE).values(outbox_message_id=outbox_id, failed=False))
    return QueuedEmail(outbox_id, message_id)


def update_context_part(executor: Session | Connection, name: str, changes: Mapping[int, dict[str, Any]]) -> None:
    """Merge ``changes[outbox_id]`` into one part of the context of each queued email not sent yet, in the
    caller's transaction (a receipt's invoice, numbered after its charge was recorded): one read, one
    executemany."""
    if not changes:
        return
    rows = executor.execute(
        select(_OUTBOX.c.id, _OUTBOX.c.context).where(
            _OUTBOX.c.id.in_(list(changes)), _OUTBOX.c.status != OutboxStatus.SENT.value
        )
    ).all()
    if rows:
        executor.execute(
            _SET_CONTEXT,
            [
                {
                    "outbox_id": row.id,
                    "new_context": {**row.context, name: {**row.context.get(name, {}), **changes[row.id]}},
                }
                for row in rows
            ],
        )


def queue_emails(
    executor: Session | Connection,
    emails: Sequence[NewEmail],
    *,
    mail_domain: str,
    business_date: date,
    now: datetime,
) -> list[QueuedEmail]:
    """Queue many emails in the caller's transaction, in one statement (:func:`worker.store.db.insert_many`).

    Returns them in the order of ``emails``.  An email whose Message-ID the
    outbox already holds raises SQLAlchemy's ``IntegrityError``: the caller's
    transaction, and everything it wrote, is undone.
    """
    if not emails:
        return []
    installation = installation_id(executor)
    rows = [
        _row(email, message_id_for(email.about, mail_domain, installation_id=installation, resend=email.resend))
        for email in emails
    ]
    new = insert_many(
        executor, _OUTBOX, rows, same=_new(business_date, now), returning=(_OUTBOX.c.message_id, _OUTBOX.c.id)
    )
    id_of = dict(new)
    insert_many(executor, _QUEUE, [{"outbox_message_id": outbox_id} for outbox_id in id_of.values()], same=_QUEUED)
    return [QueuedEmail(id_of[row["message_id"]], row["message_id"]) for row in rows]


#: A new message's queue row: due now, never tried.
_QUEUED = {"failed": False}


def _row(email: NewEmail, message_id: str) -> dict:
    return {
        "message_id": message_id,
        "kind": email.kind,
        "stage": email.stage,
        "language": email.language,
        "to_address": email.to_address,
        "context": email.context,
    }


def _new(business_date: date, now: datetime) -> dict:
    """The columns of a new message that do not depend on the email."""
    return {"business_date": business_date, "status": OutboxStatus.PENDING.value, "attempts": 0, "created_at": now}


def withdraw_emails(executor: Session | Connection, about: OrderEmail, mail_domain: str, resends: int = 0) -> int:
    """Withdraw an order's email and its re-sends ``1..resends`` while they are not sent yet
    (``pending``, first try or retry): what they say stopped being true (an "awaiting payment"
    confirmation of an order since paid, cancelled, or given another method).  A message a relay
    has claimed is read again by the relay just before it is sent, so only a send already under
    way goes out (its outcome then records it as sent).  Returns how many were withdrawn.  Found
    by their Message-IDs (unique), in the caller's transaction.
    """
    if about.kind not in WITHDRAWABLE_KINDS:
        raise ValueError(f"{about.kind!r} emails cannot be withdrawn")
    installation = installation_id(executor)
    message_ids = [
        message_id_for(about, mail_domain, installation_id=installation, resend=resend) for resend in range(resends + 1)
    ]
    withdrawn = (
        executor.execute(
            update(_OUTBOX)
            .where(
                _OUTBOX.c.message_id.in_(message_ids),
                _OUTBOX.c.status == OutboxStatus.PENDING.value,
            )
            .values(status=OutboxStatus.WITHDRAWN.value)
            .returning(_OUTBOX.c.id)
        )
        .scalars()
        .all()
    )
    if withdrawn:  # out of the queue: no relay claims them again
        executor.execute(delete(_QUEUE).where(_QUEUE.c.outbox_message_id.in_(withdrawn)))
    return len(withdrawn)
