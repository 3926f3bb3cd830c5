"""Queueing failed messages again (:func:`worker.mail.outbox.requeue_failed_messages`, ``outbox retry``):
failed ones go back to pending with their attempts reset and their Message-IDs kept; bounced and sent
ones stay as they are; a message the renderer refused stays failed; ``business_date`` narrows it to one day."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.outbox_rows import mark
from worker.mail.outbox import requeue_failed_messages
from worker.mail.queue import NewEmail, queue_email
from worker.store.models import NoticeLedgerEntry, OutboxMessage

NOW = datetime(2027, 3, 31, 5, 0, tzinfo=ZoneInfo("UTC"))
DAY = date(2027, 3, 31)
EARLIER = DAY - timedelta(days=1)


def queued(session, mailbox_id: int, *, status: str, business_date: date = DAY) -> OutboxMessage:
    email = NewEmail(
        about=[(mailbox_id, "2027-04-15", "-15d")],
        kind="expiry-notice",
        stage="-15d",
        language="it",
        to_address=f"holder{mailbox_id}@example.it",
    )
    outbox_id = queue_email(session, email, mail_domain="pec-provider.example", business_date=business_date, now=NOW).id
    mark(session, [outbox_id], status, attempts=5, next_attempt_at=NOW + timedelta(hours=1))
    return session.get(OutboxMessage, outbox_id)


def states(session_factory) -> dict[str, tuple[str, int, str]]:
    with session_factory() as session:
        return {m.to_address: (m.status, m.attempts, m.message_id) for m in session.scalars(select(OutboxMessage))}


def test_failed_messages_go_back_to_pending_and_keep_their_message_ids(session_factory):
    with session_factory() as session, session.begin():
        for mailbox_id, status in ((1, "failed"), (2, "bounced"), (3, "sent"), (4, "failed")):
            queued(session, mailbox_id, status=status)
        queued(session, 5, status="failed", business_date=EARLIER)
    before = states(session_factory)

    with session_factory() as session, session.begin():
        assert requeue_failed_messages(session, DAY) == 2
    after = states(session_factory)
    assert {address: state[:2] for address, state in after.items()} == {
        "holder1@example.it": ("pending", 0),
        "holder2@example.it": ("bounced", 5),
        "holder3@example.it": ("sent", 5),
        "holder4@example.it": ("pending", 0),
        "holder5@example.it": ("failed", 5),  # another business date
    }
    assert {address: state[2] for address, state in after.items()} == {a: s[2] for a, s in before.items()}
    with session_factory() as session:
        requeued = session.scalar(select(OutboxMessage).where(OutboxMessage.to_address == "holder1@example.it"))
        assert requeued.next_attempt_at is None  # due now

    with session_factory() as session, session.begin():
        assert requeue_failed_messages(session) == 1  # every date: the earlier one
    assert states(session_factory)["holder5@example.it"][:2] == ("pending", 0)


def test_a_message_the_renderer_refused_stays_failed(session_factory):
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 15))
        message = queued(session, 1, status="failed")
        session.add(
            NoticeLedgerEntry(
                mailbox_id=mailbox.id,
                cycle_expires_on=mailbox.expires_on,
                stage="-15d",
                kind="expiry-notice",
                business_date=DAY,
                outbox_message_id=message.id,
                refused_reason="non-ascii-local-part: the address's local part is not ASCII",
            )
        )
    with session_factory() as session, session.begin():
        assert requeue_failed_messages(session) == 0
    assert states(session_factory)["holder1@example.it"][:2] == ("failed", 5)
