"""The relay's claim on PostgreSQL (one statement on its own psycopg connection) against the
general one (:func:`worker.mail.outbox.claim_messages`, SQLAlchemy in a transaction): the same
messages, the same fields, the same leases, whatever the rows' states and the locks held."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text

from worker.store.models import OutboxMessage
from worker.mail.outbox import CLAIM_LEASE, claim_messages, claim_messages_on_postgresql

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
#: the numbers another transaction holds locked meanwhile)
SCENARIOS = {
    "due, in two claims": (None, [3, 10], ()),
    "due, one at a time": (None, [1, 1, 1, 1, 1, 1], ()),
    "due, past a locked row": (None, [2, 10], (9, 1)),
    "by id, in two claims": ([5, 4, 3, 2, 1, 8], [2, 10], ()),
    "by id, past a locked row": ([10, 9, 7, 6, 5], [1, 10], (9,)),
    "by id, none due": ([2, 3, 6, 7], [10], ()),
    "by id, unknown ids": ([10_000, 10_001], [10], ()),
}


def seed(session_factory) -> dict[int, int]:
    with session_factory() as session, session.begin():
        for number, status, next_attempt_at, attempts in MESSAGES:
            session.add(
                OutboxMessage(
                    message_id=f"m{number}@pec-provider.example", kind="expiry-notice", stage="-15d",
                    language="en" if number % 2 else "it", to_address=f"titolare{number}@example.it",
                    business_date=NOW.date(), context={"n": number, "mailboxes": [{"address": f"c{number}@pec.it"}]},
                    status=status, attempts=attempts, next_attempt_at=next_attempt_at, created_at=NOW,
                )  # fmt: skip
            )
    with session_factory() as session:
        return {int(m.split("@")[0][1:]): i for m, i in session.execute(select(OutboxMessage.message_id, OutboxMessage.id))}


def run(engine, session_factory, scenario: str, claim_with: str) -> tuple[list, dict]:
    only, limits, locked = SCENARIOS[scenario]
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE outbox_messages RESTART IDENTITY CASCADE"))
    ids = seed(session_factory)
    asked = None if only is None else [ids.get(number, number) for number in only]
    claims = []
    with engine.connect() as holder:
        if locked:
            holder.execute(
                text("SELECT id FROM outbox_messages WHERE id = ANY(:ids) FOR UPDATE"), {"ids": [ids[n] for n in locked]}
            )
        for limit in limits:
            if claim_with == "orm":
                with session_factory() as session, session.begin():
                    rows = claim_messages(session, NOW, limit, asked)
            else:
                with engine.connect() as connection:
                    connection.execution_options(isolation_level="AUTOCOMMIT")
                    rows = claim_messages_on_postgresql(connection.connection.driver_connection, NOW, limit, asked)
            claims.append([tuple(getattr(row, field) for field in FIELDS) for row in rows])
        holder.rollback()
    with session_factory() as session:
        state = {
            message_id: (status, next_attempt_at)
            for message_id, status, next_attempt_at in session.execute(
                select(OutboxMessage.message_id, OutboxMessage.status, OutboxMessage.next_attempt_at)
            )
        }
    return claims, state


FIELDS = ("id", "kind", "stage", "language", "to_address", "message_id", "context", "attempts", "status")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_postgresql_claim_takes_what_the_general_claim_takes(engine, session_factory, scenario):
    if engine.dialect.name != "postgresql":
        pytest.skip("the one-statement claim is PostgreSQL's")
    orm_claims, orm_state = run(engine, session_factory, scenario, "orm")
    raw_claims, raw_state = run(engine, session_factory, scenario, "raw")
    assert raw_claims == orm_claims
    assert raw_state == orm_state
    # And the claims did something in most scenarios: a lease on what they took.
    leased = sorted(m for m, (_, at) in raw_state.items() if at == NOW + CLAIM_LEASE)
    assert leased == sorted(row[5] for claim in raw_claims for row in claim)


def test_a_claim_found_something_in_the_scenarios_that_ask_for_it(engine, session_factory):
    """Guards the comparison above against two claims that both return nothing."""
    claims, _ = run(engine, session_factory, "due, in two claims", "raw")
    assert [[row[5] for row in claim] for claim in claims] == [
        ["m1@pec-provider.example", "m4@pec-provider.example", "m5@pec-provider.example"],
        ["m8@pec-provider.example", "m9@pec-provider.example", "m10@pec-provider.example"],
    ]
    claims, _ = run(engine, session_factory, "by id, past a locked row", "raw")
    assert [[row[5] for row in claim] for claim in claims] == [["m5@pec-provider.example"], ["m10@pec-provider.example"]]
    assert claims[0][0][6] == {"n": 5, "mailboxes": [{"address": "c5@pec.it"}]}  # the context, decoded
