"""Orders and payments asked twice at once: one order started, confirmed, registered, charged at the gateway."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.orders import NOW, TODAY, link_for
from tests.support.payments import LATER, place_order
from tests.support.rows import count
from worker.gateways.sandbox import SandboxGateway
from worker.services import orders, payments
from worker.services.payments import PaymentRefused
from worker.store.models import Mailbox, OutboxMessage, Payment, RenewalOrder, SandboxCharge


def run_together(functions):
    """Run the functions at once in threads; their results (or exceptions) in order."""
    import threading

    barrier = threading.Barrier(len(functions))
    results: list = [None] * len(functions)

    def runner(index, function):
        barrier.wait()
        try:
            results[index] = function()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=runner, args=(index, function)) for index, function in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_registrations_at_once_register_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox)
        number, total = order.order_number, order.total_cents

    def pay(reference):
        def call():
            with session_factory() as session, session.begin():
                return payments.register_payment(
                    session,
                    order_number=number,
                    amount_cents=total,
                    method="bank_transfer",
                    reference=reference,
                    now=LATER,
                    today=date(2027, 3, 2),
                    settings=settings,
                )

        return call

    results = run_together([pay("CRO A"), pay("CRO B"), pay("CRO A")])
    registered = [r for r in results if isinstance(r, payments.RegistrationResult) and r.registered]
    assert len(registered) == 1
    assert all(
        isinstance(r, payments.RegistrationResult) or (isinstance(r, PaymentRefused) and r.code == "already_paid")
        for r in results
    ), results
    with session_factory() as session:
        assert count(session, Payment) == 1
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)
        assert session.scalar(select(func.count()).where(OutboxMessage.kind == "renewal-completed")) == 1


def test_two_posts_of_a_link_at_once_start_one_order(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        session.commit()
        link = link_for(mailbox)

    def start():
        with session_factory() as session, session.begin():
            return orders.start_order(session, link, TODAY, NOW).id

    results = run_together([start] * 4)
    assert len(set(results)) == 1 and isinstance(results[0], int), results
    with session_factory() as session:
        assert count(session, RenewalOrder) == 1


def test_two_confirmations_at_once_confirm_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        orders.choose_mailboxes(session, order, [], TODAY)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, order, NOW)
        session.commit()
        public_id = order.public_id

    def confirm():
        with session_factory() as session, session.begin():
            found = orders.find_order(session, public_id)
            return orders.confirm_order(session, found, now=NOW, today=TODAY, settings=settings).order_number

    results = run_together([confirm] * 3)
    assert len(set(results)) == 1 and str(results[0]).startswith("PEC-2027-"), results
    with session_factory() as session:
        assert session.scalar(select(func.count()).where(OutboxMessage.kind == "order-confirmation")) == 1


def test_two_checkouts_at_once_charge_once(session_factory, settings):
    gateway = SandboxGateway(session_factory, latency_ms=300)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="card")
        public_id = order.public_id

    def checkout():
        with session_factory() as session:
            found = orders.find_order(session, public_id)
            return payments.pay_order_with_gateway(
                session, gateway, found, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
            ).outcome

    results = run_together([checkout, checkout, checkout])
    assert set(results) <= {"succeeded", "already_paid"} and "succeeded" in results, results
    with session_factory() as session:
        assert count(session, SandboxCharge) == 1
        assert count(session, Payment) == 1
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)
