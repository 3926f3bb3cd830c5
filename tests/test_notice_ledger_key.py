"""The ledger's unique key (mailbox, expiry cycle, stage): a notice is written once, whoever writes it.

Mailboxes are locked per batch, so two scans over the same mailboxes normally
wait for each other (tests/test_daily_job.py).  The key is what holds when two
writers have both decided a notice is due before either has written it: the
second insert of the same key fails and its whole batch (outbox message
included) is rolled back.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from tests.support.factories import make_mailbox
from worker.mail.message_ids import installation_id, message_id_for
from worker.rules.schedule import DEFAULT_STAGES
from worker.services import notices
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import NoticeLedgerEntry, OutboxMessage

EXPIRES = date(2027, 3, 31)
TODAY = date(2027, 3, 24)  # -7d
NOW = datetime(2027, 3, 24, 5, 0, tzinfo=UTC)
MAIL_DOMAIN = "pec-provider.example"


@pytest.fixture(params=["postgresql", "sqlite"])
def any_database(request, tmp_path):
    """A session factory on the test PostgreSQL database, then on a new SQLite file, both migrated."""
    if request.param == "postgresql":
        yield request.getfixturevalue("session_factory")
        return
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    migrate.upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def ledger_row(mailbox_id: int, *, cycle: date = EXPIRES, stage: str = "-7d") -> dict:
    return {
        "mailbox_id": mailbox_id,
        "cycle_expires_on": cycle,
        "stage": stage,
        "kind": "expiry-notice",
        "business_date": TODAY,
    }


def counts(factory) -> tuple[int, int]:
    """(ledger rows, outbox messages)."""
    with factory() as session:
        return (
            session.scalar(select(func.count()).select_from(NoticeLedgerEntry)),
            session.scalar(select(func.count()).select_from(OutboxMessage)),
        )


def test_a_second_insert_of_the_same_mailbox_cycle_and_stage_fails(any_database):
    factory = any_database
    with factory() as session, session.begin():
        mailbox_id = make_mailbox(session, expires_on=EXPIRES).id
        session.execute(insert(NoticeLedgerEntry), [ledger_row(mailbox_id)])
    with factory() as session, pytest.raises(IntegrityError, match="uq_notice_ledger_key|UNIQUE constraint failed"):
        with session.begin():
            session.execute(insert(NoticeLedgerEntry), [ledger_row(mailbox_id)])
    # Another stage, or the same stage of another cycle, is another notice.
    with factory() as session, session.begin():
        session.execute(
            insert(NoticeLedgerEntry),
            [ledger_row(mailbox_id, stage="-1d"), ledger_row(mailbox_id, cycle=date(2028, 3, 31))],
        )
    assert counts(factory) == (3, 0)


def planned_batches(factory, batches: list[list[int]]) -> list[notices.NoticeBatch]:
    """What the scan decides to write for each batch, each decided with nothing written yet."""
    plans = []
    for mailbox_ids in batches:
        with factory() as session:
            plans.append(
                notices.plan_notice_batch(
                    session, mailbox_ids, today=TODAY, stages=DEFAULT_STAGES, now=NOW, mail_domain=MAIL_DOMAIN
                )
            )
            session.rollback()
    return plans


def test_two_batches_that_both_decided_a_notice_write_it_once(any_database):
    """Two threads run the scan's batch writer at once, over the same mailbox.

    One batch holds the holder's two mailboxes (one email for both), the other only the
    first: two different outbox messages, so only the ledger's key can stop the second
    notice for the first mailbox.  Both were decided before either was written.  The
    writer that loses sees SQLAlchemy's ``IntegrityError``, and its batch leaves nothing.
    """
    factory = any_database
    with factory() as session, session.begin():
        first = make_mailbox(session, expires_on=EXPIRES, reference_email="anna.verdi@example.it").id
        second = make_mailbox(session, expires_on=EXPIRES, reference_email="anna.verdi@example.it").id
    plans = planned_batches(factory, [[first, second], [first]])
    assert [[len(rows) for rows in plan.ledger] for plan in plans] == [[2], [1]]
    with factory() as session, session.begin():
        installation = installation_id(session)  # created here if missing, before the race
    message_ids = [message_id_for(plan.emails[0].about, MAIL_DOMAIN, installation_id=installation) for plan in plans]
    assert message_ids[0] != message_ids[1]

    barrier = threading.Barrier(len(plans))
    committed: list[int] = []
    refused: list[Exception] = []

    def run(index: int) -> None:
        with factory() as session:
            session.begin()
            barrier.wait()
            try:
                notices.write_notice_batch(session, plans[index])
                session.commit()
                committed.append(index)
            except IntegrityError as error:
                session.rollback()
                refused.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert len(committed) == 1 and len(refused) == 1, (committed, refused)
    assert re.search("uq_notice_ledger_key|UNIQUE constraint failed: notice_ledger", str(refused[0]))
    with factory() as session:
        keys = session.execute(select(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.stage)).all()
        messages = session.scalars(select(OutboxMessage.message_id)).all()
    # One notice per mailbox, and the refused batch left no outbox message behind.
    expected_keys = [(first, "-7d"), (second, "-7d")] if committed == [0] else [(first, "-7d")]
    assert sorted(keys) == expected_keys
    assert messages == [message_ids[committed[0]]]
