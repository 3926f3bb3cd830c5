"""A re-import leaves unchanged mailboxes alone and counts them as unchanged; it moves everything else as before."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select, text, update

from tests.support.importing import mailbox, make_csv, row, run
from worker.services.importer import ImportReport
from worker.store.models import Mailbox, MailboxSchedule


def versions(session_factory) -> dict[str, str]:
    """Each mailbox's row version (PostgreSQL's xmin): a new one for every update."""
    with session_factory() as session:
        return dict(session.execute(text("SELECT address, xmin::text FROM mailboxes")).all())


def test_an_unchanged_mailbox_is_not_rewritten(session_factory):
    text_ = make_csv(row(1), row(2), row(3, plan="pro"))
    run(session_factory, text_)
    before = versions(session_factory)
    changed = make_csv(row(1), row(2, plan="premium"), row(3, plan="pro"), row(4))
    assert run(session_factory, changed) == ImportReport(
        rows=4, created=1, updated=1, unchanged=2, domains=0, warnings=[]
    )
    after = versions(session_factory)
    assert after["user1@pec.example.it"] == before["user1@pec.example.it"]
    assert after["user3@pec.example.it"] == before["user3@pec.example.it"]
    assert after["user2@pec.example.it"] != before["user2@pec.example.it"]
    assert mailbox(session_factory, "user2@pec.example.it").plan == "premium"


def test_a_mailbox_the_scan_moved_on_goes_back_to_the_start_of_its_cycle(any_database):
    """As before: a re-import sets next_action_on to the cycle's first stage, even if nothing else changed."""
    factory = any_database
    text_ = make_csv(row(1, expires_on="2027-05-31"), row(2, expires_on="2027-05-31"))
    run(factory, text_)
    with factory.begin() as session:
        session.execute(
            update(MailboxSchedule)
            .where(
                MailboxSchedule.mailbox_id
                == select(Mailbox.id).where(Mailbox.address == "user1@pec.example.it").scalar_subquery()
            )
            .values(next_action_on=date(2027, 5, 1))
        )
    assert run(factory, text_) == ImportReport(rows=2, created=0, updated=1, unchanged=1, domains=0, warnings=[])
    assert mailbox(factory, "user1@pec.example.it").next_action_on == date(2027, 2, 28)
    with factory() as session:
        assert session.scalars(select(MailboxSchedule.next_action_on)).all() == [date(2027, 2, 28)] * 2


def test_a_column_set_to_empty_is_updated(any_database):
    """NULL against a value is a change (IS DISTINCT FROM, not <>)."""
    factory = any_database
    run(factory, make_csv(row(1, payment_method="pm_card_visa", card_expiry="2028-02")))
    assert run(factory, make_csv(row(1, payment_method="", card_expiry=""))).updated == 1
    box = mailbox(factory, "user1@pec.example.it")
    assert (box.payment_method, box.card_expires_on) == (None, None)
