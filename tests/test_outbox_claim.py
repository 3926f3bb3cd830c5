"""The relay's claim (:func:`worker.mail.outbox.claim_messages`): which messages it takes, the lease it
writes, and what it reads of them, whatever the rows' states and the locks other relays hold.

On PostgreSQL, and on SQLite for the scenarios without another relay's lock (SQLite has one
writer at a time: there is nothing to skip).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, select, text

from tests.support.outbox_rows import outbox_message
from worker.mail.outbox import CLAIM_LEASE, claim_messages, write_outcome_rows
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory, quick_commit_connection
from worker.store.models import OutboxMessage, OutboxQueueEntry

NOW = datetime(2027, 3, 31, 5, 0, tzinfo=ZoneInfo("UTC"))

#: (number, status, next_attempt_at, attempts): every state a message can be in at a claim.
MESSAGES = [
    (1, "pending", None, 0),  # new
    (2, "sent", None, 1),
    (3, "pending", NOW + timedelta(minutes=5), 1),  # deferred, or leased to another relay
    (4, "pending", NOW - timedelta(minutes=1), 2),  # its retry is due
    (5, "pending", None, 0),
    (6, "bounced", None, 1),
    (7, "failed", None, 5),
    (8, "pending", NOW, 3),  # due this very instant
    (9, "pending", None, 0),  # locked by another relay's open claim in the locked scenarios
    (10, "pending", None, 0),
]

#: (only: the numbers asked for, or None for "whatever is due"; limits of the claims in turn;
#: the numbers another transaction holds locked meanwhile; the numbers each claim takes)
SCENARIOS = {
    "due, in two claims": (None, [3, 10], (), [[1, 4, 5], [8, 9, 10]]),
    "due, one at a time": (None, [1, 1, 1, 1, 1, 1, 1], (), [[1], [4], [5], [8], [9], [10], []]),
    "due, past a locked row": (None, [2, 10], (9, 1), [[4, 5], [8, 10]]),
    "by id, in two claims": ([5, 4, 3, 2, 1, 8], [2, 10], (), [[1, 4], [5, 8]]),
    "by id, past a locked row": ([10, 9, 7, 6, 5], [1, 10], (9,), [[5], [10]]),
    "by id, none due": ([2, 3, 6, 7], [10], (), [[]]),
    "by id, unknown ids": ([10_000, 10_001], [10], (), [[]]),
}
UNLOCKED = sorted(name for name, (_, _, locked, _) in SCENARIOS.items() if not locked)


def seed(session_factory) -> dict[int, int]:
    """The messages above; their ids by number."""
    with session_factory() as session, session.begin():
        for number, status, next_attempt_at, attempts in MESSAGES:
            session.add(
                outbox_message(
                    message_id=f"m{number}@pec-provider.example",
                    kind="expiry-notice",
                    stage="-15d",
                    language="en" if number % 2 else "it",
                    to_address=f"titolare{number}@example.it",
                    business_date=NOW.date(),
                    context={"n": number, "mailboxes": [{"address": f"c{number}@pec.it"}]},
                    status=status,
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    created_at=NOW,
                )
            )
    with session_factory() as session:
        return {
            int(m.split("@")[0][1:]): i for m, i in session.execute(select(OutboxMessage.message_id, OutboxMessage.id))
        }


def check(session_factory, scenario: str, holder=None) -> None:
    """Run the scenario's claims (``holder``, a connection, takes its locks first) and check them."""
    only, limits, locked, expected = SCENARIOS[scenario]
    ids = seed(session_factory)
    number_of = {outbox_id: number for number, outbox_id in ids.items()}
    asked = None if only is None else [ids.get(number, number) for number in only]
    if locked:
        holder.execute(
            text("SELECT outbox_message_id FROM outbox_queue WHERE outbox_message_id = ANY(:ids) FOR UPDATE"),
            {"ids": [ids[n] for n in locked]},
        )
    claims = []
    for limit in limits:
        with session_factory() as session, session.begin():
            claims.append(claim_messages(session, NOW, limit, asked))
    if holder is not None:
        holder.rollback()

    assert [[number_of[row.id] for row in claim] for claim in claims] == expected
    for row in (row for claim in claims for row in claim):
        number = number_of[row.id]
        _, status, _, attempts = MESSAGES[number - 1]
        assert (row.kind, row.stage, row.language, row.to_address, row.message_id, row.attempts, row.status) == (
            "expiry-notice",
            "-15d",
            "en" if number % 2 else "it",
            f"titolare{number}@example.it",
            f"m{number}@pec-provider.example",
            attempts,
            status,
        )
        assert row.context == {"n": number, "mailboxes": [{"address": f"c{number}@pec.it"}]}  # decoded
    # The lease is on the queue rows of what was claimed, and on nothing else; the messages' rows
    # are not written by a claim.
    with session_factory() as session:
        state = {
            number_of[outbox_id]: (status, next_attempt_at, leased)
            for outbox_id, status, next_attempt_at, leased in session.execute(
                select(
                    OutboxMessage.id,
                    OutboxMessage.status,
                    OutboxMessage.next_attempt_at,
                    OutboxQueueEntry.next_attempt_at,
                ).outerjoin(OutboxQueueEntry)
            )
        }
    claimed = {number for claim in expected for number in claim}
    queued = {"pending": lambda at: at, "failed": lambda at: None}
    assert state == {
        number: (
            status,
            next_attempt_at,
            NOW + CLAIM_LEASE if number in claimed else queued[status](next_attempt_at) if status in queued else None,
        )
        for number, status, next_attempt_at, _ in MESSAGES
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_claim_takes_the_due_messages_in_order_past_the_locked_ones(engine, session_factory, scenario):
    with engine.connect() as holder:
        check(session_factory, scenario, holder)


@pytest.mark.parametrize("scenario", UNLOCKED)
def test_a_claim_on_sqlite_takes_the_same(tmp_path, scenario):
    url = f"sqlite:///{tmp_path / 'claims.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        check(make_session_factory(engine), scenario)
    finally:
        engine.dispose()


def test_a_claim_on_the_relay_s_own_connection_commits_with_it(engine, session_factory):
    """The relay claims on a connection of its own: the lease is visible to another relay once the
    claim is committed."""
    ids = seed(session_factory)
    with quick_commit_connection(engine) as connection:
        rows = claim_messages(connection, NOW, 2)
        connection.commit()
        with session_factory() as other:
            leased = other.scalars(
                select(OutboxQueueEntry.outbox_message_id).where(OutboxQueueEntry.next_attempt_at == NOW + CLAIM_LEASE)
            ).all()
    assert sorted(leased) == [row.id for row in rows] == [ids[1], ids[4]]


def test_a_group_of_outcomes_lands_whole_or_not_at_all(engine, session_factory):
    """The relay's outcome write is two statements (the message's row, then its queue row): a
    process that dies between them leaves neither, so a sent message never stays in the queue to
    be claimed and sent again.  The death is the second statement failing, then the connection
    going back to the pool."""
    ids = seed(session_factory)
    sent = {"status": "sent", "attempts": 1, "next_attempt_at": None, "last_error": None, "sent_at": NOW}

    def die_before_the_queue_row_goes(_connection, _cursor, statement, *_arguments) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM OUTBOX_QUEUE"):
            raise RuntimeError("killed between the two statements")

    with quick_commit_connection(engine) as connection:
        claimed = claim_messages(connection, NOW, 2)
        connection.commit()
        event.listen(engine, "before_cursor_execute", die_before_the_queue_row_goes)
        try:
            with pytest.raises(RuntimeError):
                write_outcome_rows(connection, [{"id": row.id, **sent} for row in claimed])
        finally:
            event.remove(engine, "before_cursor_execute", die_before_the_queue_row_goes)
    with session_factory() as session:
        statuses = dict(session.execute(select(OutboxMessage.id, OutboxMessage.status)).all())
        queued = set(session.scalars(select(OutboxQueueEntry.outbox_message_id)))
    assert [row.id for row in claimed] == [ids[1], ids[4]]
    assert {statuses[row.id] for row in claimed} == {"pending"}  # not recorded: sent again, at least once
    assert {row.id for row in claimed} <= queued
