"""Imports of older and newer files, interleaved with renewals made here, never lose a renewal.

Hypothesis draws a sequence of steps on two mailboxes, on PostgreSQL, through
the real services: imports of files whose expiries are older, the same or
newer (sometimes with ``force``), orders paid by bank transfer
(``orders`` then ``payments.register_payment``), orders left unpaid and paid
later, and auto-renew charges (``charges.charge_mailbox``, sandbox gateway).
After every step:

- without ``force``, no expiry moved backward;
- no renewal made here since the last forced import is lost: the expiry is at
  least what it gave, and while the mailbox is in the cycle it gave, the plan
  and years paid for (an order) or the auto-renew method charged (a charge)
  are still the mailbox's;
- a paid order stays paid, a successful charge stays successful.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from tests.support.importing import make_csv, row, run
from tests.support.renewals import charge, place_order, register
from worker.rules.schedule import add_years
from worker.services import orders, payments
from worker.store.models import Base, ChargeIntent, ChargeStatus, Mailbox, OrderStatus, RenewalOrder

MANUAL = "user1@pec.example.it"  # renewed by orders
AUTO = "user2@pec.example.it"  # renewed by auto-renew charges
START = date(2027, 3, 31)
EXPIRIES = [add_years(START, years) for years in range(4)]

IMPORT = st.tuples(
    st.just("import"),
    st.sampled_from(EXPIRIES),  # MANUAL's expiry in the file
    st.sampled_from(["standard", "pro"]),  # MANUAL's plan in the file
    st.sampled_from(EXPIRIES),  # AUTO's expiry in the file
    st.sampled_from(["pm_card_visa", "paypal_ok", ""]),  # AUTO's method ("": auto-renew off)
    st.sampled_from([False, False, False, True]),  # force
)
STEPS = st.lists(
    st.one_of(
        IMPORT,
        st.tuples(st.just("pay"), st.sampled_from(["standard", "pro", "premium"]), st.sampled_from([1, 2])),
        st.tuples(st.just("order"), st.sampled_from(["standard", "pro"])),
        st.tuples(st.just("register")),
        st.tuples(st.just("charge")),
    ),
    min_size=1,
    max_size=9,
)


@dataclass
class Renewal:
    until: date
    #: What the mailbox must still have while it is in the cycle ``until``.
    values: dict


def file_for(manual_expiry: date, plan: str, auto_expiry: date, method: str) -> str:
    auto = {"auto_renew": "true", "payment_method": method} if method else {"auto_renew": "false", "payment_method": ""}
    return make_csv(
        row(1, expires_on=manual_expiry.isoformat(), plan=plan, auto_renew="false", payment_method=""),
        row(2, expires_on=auto_expiry.isoformat(), **auto),
    )


def state(session_factory) -> dict[str, Mailbox]:
    with session_factory() as session:
        found = {box.address: box for box in session.scalars(select(Mailbox))}
        session.expunge_all()
        return found


def settled(session_factory) -> tuple[set[int], set[int]]:
    """The paid orders and the successful charges."""
    with session_factory() as session:
        paid = set(session.scalars(select(RenewalOrder.id).where(RenewalOrder.status == OrderStatus.PAID.value)))
        charged = set(
            session.scalars(select(ChargeIntent.id).where(ChargeIntent.status == ChargeStatus.SUCCEEDED.value))
        )
        return paid, charged


def empty(engine) -> None:
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@given(steps=STEPS)
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
def test_imports_never_move_an_expiry_back_nor_lose_a_renewal(engine, session_factory, settings, steps):
    empty(engine)
    run(session_factory, file_for(START, "standard", START, "pm_card_visa"))
    renewals: dict[str, list[Renewal]] = {MANUAL: [], AUTO: []}
    pending: RenewalOrder | None = None
    paid, charged = settled(session_factory)

    for step in steps:
        before = state(session_factory)
        forced = False
        if step[0] == "import":
            _, manual_expiry, plan, auto_expiry, method, forced = step
            report = run(session_factory, file_for(manual_expiry, plan, auto_expiry, method), force=forced)
            assert report.rows == 2
            if forced:  # the operator's word: what was renewed before is the file's now
                renewals = {MANUAL: [], AUTO: []}
        elif step[0] in ("pay", "order"):
            box = before[MANUAL]
            today = box.expires_on - timedelta(days=20)
            years = step[2] if step[0] == "pay" else 1
            try:
                order = place_order(session_factory, settings, plan=step[1], years=years, today=today, address=MANUAL)
            except orders.OrderError:
                continue  # this cycle's link already has an order that is not a draft
            if step[0] == "order":
                pending = order
                continue
            result = register(session_factory, settings, order, today + timedelta(days=1))
            renewals[MANUAL].append(
                Renewal(result.renewed[0].new_expires_on, {"plan": step[1], "renewal_years": years})
            )
        elif step[0] == "register":
            if pending is None:
                continue
            order, pending = pending, None
            with session_factory() as session:
                cycle = session.get(RenewalOrder, order.id).lines[0].old_expires_on
            try:
                result = register(session_factory, settings, order, cycle - timedelta(days=10))
            except payments.PaymentRefused as refused:
                # Cancelled when the file renewed the cycle elsewhere, or the mailbox moved on.
                assert refused.code in ("not_payable", "mailbox_changed"), str(refused)
                continue
            renewals[MANUAL].append(
                Renewal(result.renewed[0].new_expires_on, {"plan": order.lines[0].plan, "renewal_years": order.years})
            )
        else:  # charge
            box = before[AUTO]
            if not box.auto_renew:
                continue
            done = charge(session_factory, AUTO, box.expires_on - timedelta(days=7))
            if done.outcome == "succeeded":
                renewals[AUTO].append(
                    Renewal(add_years(box.expires_on, 1), {"auto_renew": True, "payment_method": box.payment_method})
                )

        after = state(session_factory)
        for address in (MANUAL, AUTO):
            if not forced:
                assert after[address].expires_on >= before[address].expires_on, (step, address)
            for renewal in renewals[address]:
                assert after[address].expires_on >= renewal.until, (step, address, renewal)
            in_force = [renewal for renewal in renewals[address] if renewal.until == after[address].expires_on]
            if in_force:
                values = in_force[-1].values
                assert {name: getattr(after[address], name) for name in values} == values, (step, address)
        now_paid, now_charged = settled(session_factory)
        assert now_paid >= paid and now_charged >= charged
        paid, charged = now_paid, now_charged

    with session_factory() as session:  # every step left the database consistent: one row per mailbox
        assert session.scalar(select(func.count()).select_from(Mailbox)) == 2
