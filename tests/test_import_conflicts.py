"""An import never undoes a renewal made here; a later expiry in the file closes the old cycle.

Renewals through the real services on PostgreSQL: a registered bank transfer
(``payments.register_payment``), a successful auto-renew charge
(``charges.charge_mailbox`` with the sandbox gateway).  Then an older file
is imported, and what the worker holds must stay, reported per line and
column; ``force`` applies the file; a file with a later expiry (renewed
elsewhere) cancels the open orders of the old cycle and leaves its
unresolved charges for the operator, never charging that cycle again.
"""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.support.importing import mailbox, make_csv, row, run
from tests.support.renewals import ADDRESS, at, charge, place_order, register, the_mailbox
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.gateways.base import mask_token
from worker.gateways.sandbox import SandboxGateway, list_charges
from worker.rules.links import MAILBOX, RenewalLink
from worker.services import orders, payments
from worker.store.models import ChargeIntent, ChargeStatus, Mailbox, OrderStatus, RenewalOrder


class KilledDuringTheCall(Exception):
    pass


class KilledGateway(SandboxGateway):
    """The sandbox, but the process dies while the charge is in flight: its intent stays ``started``."""

    def charge(self, **kwargs):
        raise KilledDuringTheCall


# -- A registered payment ----------------------------------------------------------------------------


def test_an_older_file_does_not_undo_a_registered_payment(any_database, settings):
    """Renewed here (bank transfer registered, Pro for 2 years): the file, exported before, keeps none of it."""
    session_factory = any_database
    run(session_factory, make_csv(row(1)))  # standard, until 2027-03-31
    order = place_order(session_factory, settings, plan="pro", years=2, today=date(2027, 3, 1))
    register(session_factory, settings, order, date(2027, 3, 2))
    before = mailbox(session_factory, ADDRESS)
    assert (before.expires_on, before.plan, before.renewal_years) == (date(2029, 3, 31), "pro", 2)

    report = run(session_factory, make_csv(row(1, holder_name="Mario Rossi Bianchi", language="en")))

    after = mailbox(session_factory, ADDRESS)
    assert (after.expires_on, after.plan, after.renewal_years, after.next_action_on) == (
        date(2029, 3, 31),
        "pro",
        2,
        before.next_action_on,
    )
    assert (after.language, after.holder_id != before.holder_id) == ("en", True)  # the rest of the row applies
    reason = f"renewed here on 2027-03-02, order {order.order_number}"
    assert [str(conflict) for conflict in report.conflicts] == [
        f"line 2, column plan: kept pro ({reason}); the file says standard",
        f"line 2, column expires_on: kept 2029-03-31 ({reason}); the file says 2027-03-31",
        f"line 2, column renewal_years: kept 2 ({reason}); the file has no renewal_years column (so 1)",
    ]
    assert (report.rows, report.created, report.updated, report.unchanged, report.conflicting) == (1, 0, 0, 0, 1)
    with session_factory() as session:
        assert session.get(RenewalOrder, order.id).status == OrderStatus.PAID.value


def test_the_same_expiry_with_another_plan_keeps_the_plan_paid_for_here(session_factory, settings):
    """A file that knows the new expiry but not the plan change paid here: the plan stays."""
    run(session_factory, make_csv(row(1)))
    order = place_order(session_factory, settings, plan="premium", years=1, today=date(2027, 3, 1))
    register(session_factory, settings, order, date(2027, 3, 2))
    report = run(session_factory, make_csv(row(1, expires_on="2028-03-31", plan="standard")))
    assert mailbox(session_factory, ADDRESS).plan == "premium"
    assert [str(conflict) for conflict in report.conflicts] == [
        f"line 2, column plan: kept premium (renewed here on 2027-03-02, order {order.order_number}); the file says "
        "standard"
    ]


def test_force_applies_the_file(session_factory, settings):
    run(session_factory, make_csv(row(1)))
    order = place_order(session_factory, settings, plan="pro", years=2, today=date(2027, 3, 1))
    register(session_factory, settings, order, date(2027, 3, 2))
    report = run(session_factory, make_csv(row(1)), force=True)
    after = mailbox(session_factory, ADDRESS)
    assert (after.expires_on, after.plan, after.renewal_years) == (date(2027, 3, 31), "standard", 1)
    assert (report.updated, report.conflicting, report.conflicts) == (1, 0, [])


def test_auto_renew_switched_on_by_a_card_payment_here_is_kept(session_factory, settings):
    """Paid by card here: auto-renew on with that card.  A file with the new expiry but auto-renew off keeps it on."""
    run(session_factory, make_csv(row(1)))
    order = place_order(session_factory, settings, plan="standard", years=1, today=date(2027, 3, 1), method="card")
    with session_factory() as session:
        paid = payments.pay_order_with_gateway(
            session,
            SandboxGateway(session_factory),
            session.get(RenewalOrder, order.id),
            "pm_card_visa",
            method="card",
            now=at(date(2027, 3, 1)),
            today=date(2027, 3, 1),
            settings=settings,
        )
    assert paid.succeeded
    stored = mailbox(session_factory, ADDRESS).payment_method  # the card the sandbox kept for off-session charges
    assert stored.startswith("pm_sbx_")
    report = run(session_factory, make_csv(row(1, expires_on="2028-03-31", auto_renew="false", payment_method="")))
    box = mailbox(session_factory, ADDRESS)
    assert (box.expires_on, box.auto_renew, box.payment_method) == (date(2028, 3, 31), True, stored)
    reason = f"renewed here on 2027-03-01, order {order.order_number}"
    assert [str(conflict) for conflict in report.conflicts] == [
        f"line 2, column auto_renew: kept true ({reason}); the file says false",
        f"line 2, column payment_method: kept {mask_token(stored)} ({reason}); the file leaves it empty",
        # the stored card's expiry, which the sandbox tells as a real gateway does
        f"line 2, column card_expiry: kept {box.card_expires_on:%Y-%m} ({reason}); the file has no card_expiry column"
        " (so empty)",
    ]
    # A file that knows of a later renewal, made elsewhere, is the newer word: auto-renew off applies.
    report = run(session_factory, make_csv(row(1, expires_on="2029-03-31", auto_renew="false", payment_method="")))
    box = mailbox(session_factory, ADDRESS)
    assert (box.expires_on, box.auto_renew, box.payment_method, report.conflicts) == (
        date(2029, 3, 31),
        False,
        None,
        [],
    )


# -- A successful auto-renew charge --------------------------------------------------------------------


def test_an_older_file_does_not_undo_a_successful_charge(session_factory, settings):
    """The charge renewed the mailbox; a one-row file exported before it says the old expiry and no auto-renew."""
    text = make_csv(row(1, expires_on="2026-12-13", auto_renew="true", payment_method="pm_card_visa"))
    run(session_factory, text)
    assert charge(session_factory, ADDRESS, date(2026, 12, 6)).outcome == "succeeded"
    with session_factory() as session:
        key = session.scalar(select(ChargeIntent.idempotency_key))
    assert mailbox(session_factory, ADDRESS).expires_on == date(2027, 12, 13)

    report = run(session_factory, make_csv(row(1, expires_on="2026-12-13")))

    after = mailbox(session_factory, ADDRESS)
    assert (after.expires_on, after.auto_renew, after.payment_method) == (date(2027, 12, 13), True, "pm_card_visa")
    reason = f"renewed here on 2026-12-06, charge {key}"
    assert [str(conflict) for conflict in report.conflicts] == [
        f"line 2, column expires_on: kept 2027-12-13 ({reason}); the file says 2026-12-13",
        f"line 2, column auto_renew: kept true ({reason}); the file has no auto_renew column (so false)",
        f"line 2, column payment_method: kept pm_…visa ({reason}); the file has no payment_method column (so empty)",
    ]
    assert report.conflicting == 1


def test_the_command_reports_conflicts_and_exits_0(tmp_path, session_factory, settings, database_url):
    run(
        session_factory,
        make_csv(row(1, expires_on="2026-12-13", auto_renew="true", payment_method="pm_card_visa"), row(2)),
    )
    charge(session_factory, ADDRESS, date(2026, 12, 6))
    source = tmp_path / "stale.csv"
    source.write_text(make_csv(row(1, expires_on="2026-12-13", auto_renew="false"), row(2), row(3)), encoding="utf-8")
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
    }

    dry = CliRunner().invoke(main, ["import", "mailboxes", "--dry-run", str(source)], env=env, catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert [line.partition(" (")[0] for line in lines[:-1]] == [
        "conflict: line 2, column expires_on: kept 2027-12-13",
        "conflict: line 2, column auto_renew: kept true",
        "conflict: line 2, column payment_method: kept pm_…visa",
    ]
    assert lines[-1] == (
        f"dry run: 3 mailboxes in {source}: 1 new, 0 updated, 1 unchanged, 1 conflict(s) (0 warning(s)); nothing was "
        "changed"
    )
    assert mailbox(session_factory, ADDRESS).expires_on == date(2027, 12, 13)
    with session_factory() as session:
        assert session.scalars(select(Mailbox.address).order_by(Mailbox.address)).all() == [
            ADDRESS,
            "user2@pec.example.it",
        ]

    result = CliRunner().invoke(main, ["import", "mailboxes", str(source)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:-1] == lines[:-1]
    assert result.stdout.splitlines()[-1] == (
        f"imported 3 mailboxes from {source}: 1 new, 0 updated, 1 unchanged, 1 conflict(s) (0 warning(s))"
    )
    forced = CliRunner().invoke(main, ["import", "mailboxes", "--force", str(source)], env=env, catch_exceptions=False)
    assert forced.stdout.splitlines() == [
        f"imported 3 mailboxes from {source}: 0 new, 1 updated, 2 unchanged, 0 conflict(s) (0 warning(s))"
    ]
    after = mailbox(session_factory, ADDRESS)
    assert (after.expires_on, after.auto_renew) == (date(2026, 12, 13), False)


# -- No renewal here: an older file still never moves an expiry back ----------------------------------


def test_an_older_file_after_a_newer_one_keeps_the_later_expiry(any_database):
    factory = any_database
    run(factory, make_csv(row(1, expires_on="2028-03-31", plan="pro"), row(2)))
    report = run(
        factory, make_csv(row(1, expires_on="2027-03-31", holder_name="Mario Rossi Bianchi"), row(2, plan="pro"))
    )
    box = mailbox(factory, ADDRESS)
    assert (box.expires_on, box.plan) == (date(2028, 3, 31), "pro")
    assert [str(conflict) for conflict in report.conflicts] == [
        "line 2, column plan: kept pro (an earlier import gave the later expiry 2028-03-31); the file says standard",
        "line 2, column expires_on: kept 2028-03-31 (an earlier import gave the later expiry 2028-03-31);"
        " the file says 2027-03-31",
    ]
    assert (report.created, report.updated, report.unchanged, report.conflicting) == (0, 1, 0, 1)
    assert mailbox(factory, "user2@pec.example.it").plan == "pro"  # the same expiry, not renewed here: applied


def test_a_dry_run_changes_nothing(any_database):
    factory = any_database
    run(factory, make_csv(row(1, expires_on="2028-03-31"), row(2)))
    with factory() as session:
        before = session.execute(select(Mailbox.__table__)).all()
    report = run(factory, make_csv(row(1), row(2, plan="pro"), row(3)), dry_run=True)
    assert (report.dry_run, report.created, report.updated, report.unchanged, report.conflicting) == (True, 1, 1, 0, 1)
    with factory() as session:
        assert session.execute(select(Mailbox.__table__)).all() == before


# -- Renewed elsewhere: a later expiry ----------------------------------------------------------------


def test_a_later_expiry_closes_the_orders_of_the_old_cycle(session_factory, settings):
    run(session_factory, make_csv(row(1), row(2)))
    open_order = place_order(session_factory, settings, plan="pro", years=1, today=date(2027, 3, 1))
    with session_factory() as session:  # a draft of the other mailbox, left at its first step
        box = the_mailbox(session, "user2@pec.example.it")
        draft = orders.start_order(
            session, RenewalLink(MAILBOX, box.id, box.expires_on), date(2027, 3, 1), at(date(2027, 3, 1))
        )
        session.commit()

    report = run(session_factory, make_csv(row(1, expires_on="2028-03-31"), row(2, expires_on="2028-03-31")))

    assert mailbox(session_factory, ADDRESS).expires_on == date(2028, 3, 31)
    assert report.closed == [
        f"line 2: order {open_order.order_number} (awaiting payment) for the cycle of {ADDRESS} ending 2027-03-31"
        " cancelled: the file renews it to 2028-03-31 elsewhere",
        "line 3: a draft order for the cycle of user2@pec.example.it ending 2027-03-31"
        " cancelled: the file renews it to 2028-03-31 elsewhere",
    ]
    with session_factory() as session:
        assert {session.get(RenewalOrder, open_order.id).status, session.get(RenewalOrder, draft.id).status} == {
            "cancelled"
        }
    # The transfer that arrives for it now is refused, and renews nothing twice.
    with pytest.raises(payments.PaymentRefused, match="cancelled, not awaiting payment"):
        register(session_factory, settings, open_order, date(2027, 3, 5))
    assert mailbox(session_factory, ADDRESS).expires_on == date(2028, 3, 31)
    assert (report.updated, report.conflicting) == (2, 0)


def test_a_later_expiry_leaves_an_unresolved_charge_to_look_up_and_never_charges_that_cycle(session_factory):
    """The charge was in flight when its process died; the file then says the mailbox was renewed elsewhere."""
    run(session_factory, make_csv(row(1, expires_on="2026-12-13", auto_renew="true", payment_method="pm_card_visa")))
    with pytest.raises(KilledDuringTheCall):
        charge(session_factory, ADDRESS, date(2026, 12, 6), KilledGateway(session_factory))
    with session_factory() as session:
        intent = session.scalars(select(ChargeIntent)).one()
    assert intent.status == ChargeStatus.STARTED.value

    report = run(
        session_factory, make_csv(row(1, expires_on="2027-12-13", auto_renew="true", payment_method="pm_card_visa"))
    )

    assert report.warnings == [
        f"line 2: the auto-renew charge {intent.idempotency_key} for the cycle of {ADDRESS} ending 2026-12-13 is"
        " started (its answer was never recorded); the file renews the mailbox to 2027-12-13 elsewhere, so that"
        " cycle is not charged again: look the charge up (pec-renewal sandbox charges, or the gateway) and refund"
        " it if it went through"
    ]
    with session_factory() as session:
        assert session.get(ChargeIntent, intent.id).status == ChargeStatus.STARTED.value  # kept for the operator
    attempts = len(list_charges(session_factory))
    # The rest of the old cycle's charge days: nothing is charged, nothing looked up for it.
    for day in (date(2026, 12, 7), date(2026, 12, 8), date(2026, 12, 10), date(2026, 12, 12)):
        with session_factory() as session, session.begin():
            the_mailbox(session).next_action_on = day  # due, as if its charge work had been left for that day
        done = charge(session_factory, ADDRESS, day)
        assert (done.charges, done.lookups, done.outcome) == (0, 0, "idle")
    assert len(list_charges(session_factory)) == attempts
    with session_factory() as session:
        assert session.scalars(select(ChargeIntent.cycle_expires_on)).all() == [date(2026, 12, 13)]
    assert mailbox(session_factory, ADDRESS).expires_on == date(2027, 12, 13)
