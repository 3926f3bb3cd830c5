"""The outbox's two tables on PostgreSQL: relays claiming at once take disjoint sets of
``outbox_queue`` rows, and a sent message's outcome is a HOT update of its ``outbox_messages``
row (no new index entry), its queue row deleted in the same transaction."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text

from worker.mail.outbox import CLAIM_LEASE, claim_messages, write_outcome_rows
from worker.mail.queue import NewEmail, queue_emails
from worker.store.models import OutboxMessage, OutboxQueueEntry, OutboxStatus

DAY = date(2027, 3, 31)
NOW = datetime(2027, 3, 31, 5, 0, tzinfo=ZoneInfo("UTC"))


def queue(session_factory, count: int) -> list[int]:
    """``count`` notices queued by the outbox's writer; their ids."""
    emails = [
        NewEmail(
            about=[(number, "2027-04-15", "-15d")],
            kind="expiry-notice",
            stage="-15d",
            language="it",
            to_address=f"titolare{number}@example.it",
            context={"mailboxes": [{"address": f"casella{number}@pec.example.it", "expires_on": "2027-04-15"}]},
        )
        for number in range(count)
    ]
    with session_factory() as session, session.begin():
        queued = queue_emails(session, emails, mail_domain="pec-provider.example", business_date=DAY, now=NOW)
    return [email.id for email in queued]


def test_two_relays_claiming_at_once_take_disjoint_sets(engine, session_factory):
    ids = queue(session_factory, 10)
    with engine.connect() as first, engine.connect() as second:
        taken_first = [row.id for row in claim_messages(first, NOW, 4)]  # still locked: not committed
        taken_second = [row.id for row in claim_messages(second, NOW, 10)]
        first.commit()
        second.commit()
        with engine.connect() as third:
            assert claim_messages(third, NOW, 10) == []  # every message leased
    assert taken_first == ids[:4]
    assert taken_second == ids[4:]
    with session_factory() as session:
        leases = session.scalars(select(OutboxQueueEntry.next_attempt_at)).all()
    assert leases == [NOW + CLAIM_LEASE] * 10


def sent(outbox_id: int) -> dict:
    """A sent message's outcome, as the relay writes it."""
    return {
        "id": outbox_id,
        "status": OutboxStatus.SENT.value,
        "attempts": 1,
        "next_attempt_at": None,
        "last_error": None,
        "sent_at": NOW,
    }


def updates_of_the_outbox(connection) -> tuple[int, int]:
    """(updates, HOT updates) of ``outbox_messages`` this backend has not yet reported: read
    twice in one transaction, their difference is that transaction's."""
    row = connection.execute(
        text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'outbox_messages'")
    ).one()
    return row[0], row[1]


def test_a_sent_message_s_outcome_is_a_hot_update(engine, session_factory):
    ids = queue(session_factory, 6)
    with engine.connect() as connection:
        assert [row.id for row in claim_messages(connection, NOW, 10)] == ids
        connection.commit()
        for outbox_id in ids:  # one outcome per transaction, as the relay's groups of one
            before = updates_of_the_outbox(connection)
            write_outcome_rows(connection, [sent(outbox_id)])
            after = updates_of_the_outbox(connection)
            connection.commit()
            assert (after[0] - before[0], after[1] - before[1]) == (1, 1), outbox_id
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(OutboxQueueEntry)) == 0
        outcomes = session.execute(select(OutboxMessage.status, OutboxMessage.sent_at)).all()
    assert outcomes == [(OutboxStatus.SENT.value, NOW)] * 6
