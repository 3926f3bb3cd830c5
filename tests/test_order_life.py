"""An order's life on the real PostgreSQL: the holder cancels it or changes its method, the daily
run lapses it, and an auto-renew charge never runs past it; no "awaiting payment" email of a paid order."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import time_machine
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tests.support.charges import CHARGE_DAY, EXPIRES, add_auto_renew, at_morning, received, run_on, text_of
from tests.support.factories import make_mailbox
from tests.support.orders import NOW, TODAY, complete_order, link_for
from worker.mail.outbox import OutboxRelay
from worker.rules import schedule
from worker.rules.links import ACCOUNT, RenewalLink
from worker.services import charges, orders, payments
from worker.services.orders import LinkState, OrderNotOpen, OrderValidationError
from worker.store.models import (
    ChargeIntent,
    Mailbox,
    OrderStatus,
    OutboxMessage,
    Payment,
    RenewalOrder,
)


def statuses(session, kind: str) -> list[str]:
    return list(
        session.scalars(select(OutboxMessage.status).where(OutboxMessage.kind == kind).order_by(OutboxMessage.id))
    )


def live_orders(session, mailbox_id: int) -> int:
    return session.scalar(
        select(func.count())
        .select_from(RenewalOrder)
        .where(
            RenewalOrder.link_target_id == mailbox_id,
            RenewalOrder.status.in_(("draft", "awaiting_payment", "paid")),
        )
    )


def charge(runtime, mailbox_id: int, day: date) -> charges.ChargesResult:
    with time_machine.travel(at_morning(day), tick=False):
        return charges.run_charges(
            runtime.session_factory,
            runtime.gateway,
            [mailbox_id],
            today=day,
            clock=runtime.clock,
            mail_domain=runtime.mail_domain,
        )


def gateway_charges(session) -> int:
    return session.scalar(select(func.count()).select_from(ChargeIntent))


# -- Cancel ----------------------------------------------------------------------------------------


def test_a_cancelled_order_frees_its_link_for_a_new_one(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = complete_order(session, settings, mailbox)
        session.commit()
        assert statuses(session, "order-confirmation") == ["pending"]

        assert orders.cancel_order(session, order, settings=settings) is True
        session.commit()
        assert order.status == OrderStatus.CANCELLED.value
        # Its confirmation, not sent yet, would ask for a payment that is now refused: withdrawn.
        assert statuses(session, "order-confirmation") == ["withdrawn"]
        assert orders.cancel_order(session, order, settings=settings) is False  # twice: nothing more

        view = orders.describe_link(session, link_for(mailbox), TODAY)
        assert view.state == LinkState.RENEWABLE and view.order_public_id is None
        again = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        session.commit()
        assert again.id != order.id and again.status == OrderStatus.DRAFT.value
        # The same link's POST again gives the new order, never a third one.
        assert orders.start_order(session, link_for(mailbox), TODAY, NOW).id == again.id
        assert live_orders(session, mailbox.id) == 1


def test_never_two_live_orders_for_one_link_and_cycle(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        first = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        session.commit()
        twin = RenewalOrder(
            public_id="another-public-id-0001", account_id=first.account_id, holder_id=first.holder_id,
            status="draft", origin="link", link_target="m", link_target_id=mailbox.id,
            link_cycle=mailbox.expires_on, language="it", mailboxes_confirmed=False, gateway_attempts=0,
            created_at=NOW,
        )  # fmt: skip
        session.add(twin)
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
        twin.status = "cancelled"  # closed orders of the same link and cycle may be many
        session.add(twin)
        session.commit()
        assert live_orders(session, mailbox.id) == 1


def test_a_paid_order_or_one_with_a_card_payment_unresolved_cannot_be_cancelled(session_factory, settings):
    with session_factory() as session:
        paid = complete_order(session, settings, make_mailbox(session, expires_on=date(2027, 4, 30)))
        payments.register_payment(
            session, order_number=paid.order_number, amount_cents=paid.total_cents, method="bank_transfer",
            reference="CRO 1", now=NOW, today=TODAY, settings=settings,
        )  # fmt: skip
        in_flight = complete_order(
            session, settings, make_mailbox(session, expires_on=date(2027, 4, 30)), method="card"
        )
        in_flight.gateway_state = "started"
        session.commit()
        with pytest.raises(OrderNotOpen, match="già stato pagato"):
            orders.cancel_order(session, paid, settings=settings)
        with pytest.raises(OrderNotOpen, match="in corso di verifica"):
            orders.cancel_order(session, in_flight, settings=settings)
        session.rollback()
        assert session.get(RenewalOrder, in_flight.id).status == "awaiting_payment"


# -- Change the method -----------------------------------------------------------------------------


def test_a_confirmed_order_changes_its_method_and_gets_a_new_confirmation(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = complete_order(session, settings, mailbox, method="card")
        order.gateway_attempts, order.gateway_state = 1, "hard_decline"  # the card was declined
        session.commit()
        total = order.total_cents

        orders.change_payment_method(session, order, "bank_transfer", now=NOW, today=TODAY, settings=settings)
        session.commit()
        assert (order.payment_method, order.total_cents, order.status) == ("bank_transfer", total, "awaiting_payment")
        assert order.gateway_state is None and order.method_changes == 1
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == "order-confirmation").order_by(OutboxMessage.id)
        ).all()
        assert [row.status for row in rows] == ["withdrawn", "pending"]
        assert rows[1].context["order"]["method"] == "bank_transfer" and rows[0].message_id != rows[1].message_id

        # The same method again changes nothing; an unknown one is refused.
        orders.change_payment_method(session, order, "bank_transfer", now=NOW, today=TODAY, settings=settings)
        assert order.method_changes == 1
        with pytest.raises(OrderValidationError):
            orders.change_payment_method(session, order, "cash", now=NOW, today=TODAY, settings=settings)
        # The transfer is registered as for any order.
        payments.register_payment(
            session, order_number=order.order_number, amount_cents=total, method="bank_transfer",
            reference="CRO 7", now=NOW, today=TODAY, settings=settings,
        )  # fmt: skip
        session.commit()
        assert statuses(session, "order-confirmation") == ["withdrawn", "withdrawn"]


def test_a_method_too_slow_for_the_deletion_date_is_refused(session_factory, settings):
    expired = TODAY - timedelta(days=88)  # deleted in three days: a postal slip would come too late
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=expired)
        order = complete_order(session, settings, mailbox, method="card")
        session.commit()
        with pytest.raises(OrderValidationError) as refused:
            orders.change_payment_method(session, order, "postal_slip", now=NOW, today=TODAY, settings=settings)
        assert "non è più disponibile" in refused.value.errors["method"]
        draft = orders.start_order(session, link_for(make_mailbox(session, expires_on=date(2027, 4, 30))), TODAY, NOW)
        with pytest.raises(OrderNotOpen, match="non è ancora confermato"):
            orders.change_payment_method(session, draft, "card", now=NOW, today=TODAY, settings=settings)


# -- Lapse -----------------------------------------------------------------------------------------


def test_unpaid_orders_lapse_on_the_deletion_date(session_factory, settings):
    expires = date(2027, 3, 20)
    deletion = schedule.deletion_date(expires)
    with session_factory() as session:
        confirmed = complete_order(session, settings, make_mailbox(session, expires_on=expires))
        draft = orders.start_order(session, link_for(make_mailbox(session, expires_on=expires)), TODAY, NOW)
        held = complete_order(session, settings, make_mailbox(session, expires_on=expires), method="card")
        held.gateway_state = "unknown"
        later = complete_order(session, settings, make_mailbox(session, expires_on=date(2027, 4, 30)))
        session.commit()

        assert orders.lapse_orders(session, deletion - timedelta(days=1)).lapsed == ()
        result = orders.lapse_orders(session, deletion)
        session.commit()
        assert set(result.lapsed) == {confirmed.order_number, draft.public_id}
        assert result.held == (held.order_number,)  # money may have moved: left for the operator
        assert (confirmed.status, draft.status, held.status, later.status) == (
            "lapsed", "lapsed", "awaiting_payment", "awaiting_payment",
        )  # fmt: skip
        assert orders.next_step(confirmed) == "lapsed"
        assert orders.lapse_orders(session, deletion).lapsed == ()  # a second run: nothing more
        with pytest.raises(payments.PaymentRefused, match="lapsed"):
            payments.register_payment(
                session, order_number=confirmed.order_number, amount_cents=confirmed.total_cents,
                method="bank_transfer", reference="CRO late", now=NOW, today=deletion, settings=settings,
            )  # fmt: skip


# -- An auto-renew charge and the holder's own order -----------------------------------------------


def plan_change_order(runtime, mailbox_id: int, method: str = "bank_transfer"):
    """The holder of an auto-renew mailbox renews with a plan change, paying by bank transfer."""
    with runtime.session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        order = complete_order(session, runtime.settings, mailbox, plan="pro", method=method, today=TODAY)
        session.commit()
        return order.order_number, order.total_cents


def test_the_charge_is_not_made_while_the_holders_order_awaits_payment(runtime, smtp_server):
    mailbox_id = add_auto_renew(runtime, "pm_card_visa", notified=True).id
    number, total = plan_change_order(runtime, mailbox_id)

    result = run_on(runtime, CHARGE_DAY)
    assert result.charges.outcomes == {"skipped-order-pending": 1}
    with runtime.session_factory() as session:
        assert gateway_charges(session) == 0
        assert session.get(Mailbox, mailbox_id).expires_on == EXPIRES
    skipped = [m for m in received(smtp_server) if m["X-PEC-Renewal-Kind"] == "charge-skipped"]
    assert len(skipped) == 1
    text = " ".join(text_of(skipped[0]).split())
    assert number in skipped[0]["Subject"]
    assert "oggi non abbiamo effettuato l'addebito automatico del rinnovo della casella PEC" in text
    assert f"è in attesa di pagamento il Suo ordine {number}" in text and "pagamento con bonifico bancario" in text
    assert "Se annulla l'ordine entro il 29 marzo 2027" in text

    run_on(runtime, CHARGE_DAY + timedelta(days=1))  # still pending: no charge, no second email
    assert [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)].count("charge-skipped") == 1
    # The bank transfer arrives and is registered: the order is paid, the charge never runs.
    with runtime.session_factory() as session:
        payments.register_payment(
            session, order_number=number, amount_cents=total, method="bank_transfer", reference="CRO 99",
            now=NOW, today=CHARGE_DAY + timedelta(days=2), settings=runtime.settings,
        )  # fmt: skip
        session.commit()
    for day in range(2, 8):
        run_on(runtime, CHARGE_DAY + timedelta(days=day))
    with runtime.session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert (mailbox.expires_on, mailbox.plan) == (date(2028, 3, 31), "pro")
        assert gateway_charges(session) == 0
        assert session.scalar(select(func.count()).select_from(Payment)) == 1


def test_a_cancelled_order_lets_the_charge_run_the_next_day(runtime, smtp_server):
    mailbox_id = add_auto_renew(runtime, "pm_card_visa", notified=True).id
    number, _total = plan_change_order(runtime, mailbox_id)
    run_on(runtime, CHARGE_DAY)
    with runtime.session_factory() as session:
        order = orders.find_order_by_number(session, number)
        orders.cancel_order(session, order, settings=runtime.settings)
        session.commit()
    result = run_on(runtime, CHARGE_DAY + timedelta(days=1))
    assert result.charges.outcomes == {"succeeded": 1}
    with runtime.session_factory() as session:
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 31)
        assert session.scalar(select(ChargeIntent.status)) == "succeeded"
    kinds = [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)]
    assert kinds.count("charge-skipped") == 1 and kinds.count("charge-succeeded") == 1


def test_an_order_still_unpaid_at_expiry_is_the_order_charge_failed_points_at(runtime, smtp_server):
    mailbox_id = add_auto_renew(runtime, "pm_card_visa", notified=True).id
    number, _total = plan_change_order(runtime, mailbox_id)
    for day in range(8):  # from the first charge day to the expiry day
        run_on(runtime, CHARGE_DAY + timedelta(days=day))
    with runtime.session_factory() as session:
        assert gateway_charges(session) == 0
        assert session.scalar(select(func.count()).select_from(RenewalOrder)) == 1  # no second order
        order = orders.find_order_by_number(session, number)
        assert order.status == "awaiting_payment" and order.origin == "auto_renew_failed"
    failed = [m for m in received(smtp_server) if m["X-PEC-Renewal-Kind"] == "charge-failed"]
    assert len(failed) == 1 and number in text_of(failed[0])


def test_a_charge_in_flight_or_done_refuses_the_confirmation(runtime, smtp_server):
    """The other order of events: the charge comes first; the holder's order cannot then be confirmed."""
    mailbox_id = add_auto_renew(runtime, "pm_card_visa", notified=True).id
    with runtime.session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        orders.choose_mailboxes(session, order, [orders.MailboxChoice(mailbox_id, "pro")], TODAY)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, order, NOW)
        session.add(
            ChargeIntent(
                mailbox_id=mailbox_id, cycle_expires_on=EXPIRES, attempt=1,
                idempotency_key=f"renewal:{mailbox_id}:{EXPIRES}:1", amount_cents=100, currency="EUR",
                payment_method="pm_card_visa", years=1, status="started", business_date=CHARGE_DAY,
                created_at=NOW,
            )
        )  # fmt: skip
        session.commit()
        with pytest.raises(OrderValidationError) as refused:
            orders.confirm_order(session, order, now=NOW, today=TODAY, settings=runtime.settings)
        assert "addebito automatico" in refused.value.errors[f"plan-{mailbox_id}"]
        session.rollback()
        # The charge's answer: it succeeded, and the mailbox is renewed.
        intent = session.scalar(select(ChargeIntent))
        intent.status = "succeeded"
        session.get(Mailbox, mailbox_id).expires_on = date(2028, 3, 31)
        session.commit()
        with pytest.raises(OrderValidationError, match="rinnovata o modificata"):
            orders.confirm_order(session, order, now=NOW, today=TODAY, settings=runtime.settings)
        session.rollback()
        assert session.get(RenewalOrder, order.id).status == "draft"


# -- No "awaiting payment" email for a paid order ---------------------------------------------------


def test_a_card_paid_before_the_relay_ran_gets_no_awaiting_payment_email(runtime, smtp_server):
    with runtime.session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), reference_email="studio@example.it")
        order = complete_order(session, runtime.settings, mailbox, method="card")
        session.commit()
        result = payments.pay_order_with_gateway(
            session, runtime.gateway, order, "pm_card_visa", method="card", now=NOW, today=TODAY,
            settings=runtime.settings,
        )  # fmt: skip
        assert result.succeeded
    runtime.relay.deliver_due()
    kinds = [message["X-PEC-Renewal-Kind"] for message in received(smtp_server)]
    assert kinds == ["renewal-completed"]
    with runtime.session_factory() as session:
        assert statuses(session, "order-confirmation") == ["withdrawn"]


def test_a_confirmation_already_sent_is_not_withdrawn(runtime, smtp_server):
    with runtime.session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = complete_order(session, runtime.settings, mailbox, method="bank_transfer")
        session.commit()
    runtime.relay.deliver_due()
    with runtime.session_factory() as session:
        order = session.get(RenewalOrder, order.id)
        orders.cancel_order(session, order, settings=runtime.settings)
        session.commit()
        assert statuses(session, "order-confirmation") == ["sent"]


# -- The notices know about the order ----------------------------------------------------------------


def test_an_expiry_notice_mentions_the_order_awaiting_payment(runtime, smtp_server):
    with runtime.session_factory() as session:
        waiting = make_mailbox(session, expires_on=date(2027, 4, 30), reference_email="studio@example.it")
        make_mailbox(session, expires_on=date(2027, 4, 30), reference_email="studio@example.it")  # no order
        order = complete_order(session, runtime.settings, waiting, method="bank_transfer")
        session.commit()
        number, address = order.order_number, waiting.address
    run_on(runtime, date(2027, 4, 15))
    notices = [m for m in received(smtp_server) if m["X-PEC-Renewal-Kind"] == "expiry-notice"]
    assert len(notices) == 1
    text = " ".join(text_of(notices[0]).split())
    html = notices[0].get_body(("html",)).get_content()
    block = f"Per questa casella è in attesa di pagamento l'ordine {number} ("
    assert block in text and "con bonifico bancario)" in text
    assert text.count("in attesa di pagamento") == 1  # only the mailbox with the order
    assert text.index(address) < text.index(block)
    assert f"l'ordine {number}" in html and "annullare l'ordine" in html


def test_a_confirmation_withdrawn_while_its_batch_is_being_sent_is_not_sent(runtime, smtp_server):
    """The relay has claimed the confirmation with an earlier email; the card is paid while the
    earlier one is being sent: the relay reads the confirmation's status again and leaves it out."""
    with runtime.session_factory() as session:
        earlier = complete_order(session, runtime.settings, make_mailbox(session, expires_on=date(2027, 4, 30)))
        order = complete_order(session, runtime.settings, make_mailbox(session, expires_on=date(2027, 4, 30)))
        session.commit()
        earlier_number, number, total = earlier.order_number, order.order_number, order.total_cents

    class PaysDuringTheFirstSend:
        """The real SMTP mailer; while it sends the first email, the other order's transfer is registered."""

        def __init__(self, mailer):
            self.mailer, self.paid = mailer, False

        def send(self, sender, recipient, message):
            if not self.paid:
                self.paid = True
                with runtime.session_factory() as session:
                    payments.register_payment(
                        session, order_number=number, amount_cents=total, method="bank_transfer",
                        reference="CRO race", now=NOW, today=TODAY, settings=runtime.settings,
                    )  # fmt: skip
                    session.commit()
            self.mailer.send(sender, recipient, message)

        def close(self):
            self.mailer.close()

    relay = OutboxRelay(
        runtime.session_factory, PaysDuringTheFirstSend(runtime.mailer), runtime.renderer,
        clock=lambda: NOW, max_attempts=3, batch_size=10,
    )  # fmt: skip
    relay.deliver_due()
    relay.deliver_due()  # the renewal-completed queued meanwhile
    sent = [(m["X-PEC-Renewal-Kind"], m["Subject"]) for m in received(smtp_server)]
    assert [kind for kind, _subject in sent] == ["order-confirmation", "renewal-completed"]
    assert earlier_number in sent[0][1]
    with runtime.session_factory() as session:
        assert statuses(session, "order-confirmation") == ["sent", "withdrawn"]


def test_the_daily_run_lapses_the_unpaid_orders(runtime, smtp_server):
    expires = date(2027, 3, 20)
    with runtime.session_factory() as session:
        mailbox = make_mailbox(session, expires_on=expires)
        order = complete_order(session, runtime.settings, mailbox)
        session.commit()
        order_id, mailbox_id = order.id, mailbox.id
    run_on(runtime, schedule.last_renewable_day(expires))
    with runtime.session_factory() as session:
        assert session.get(RenewalOrder, order_id).status == "awaiting_payment"
    run_on(runtime, schedule.deletion_date(expires))
    with runtime.session_factory() as session:
        assert session.get(RenewalOrder, order_id).status == "lapsed"
        view = orders.describe_link(session, link_for(session.get(Mailbox, mailbox_id), expires), TODAY)
        assert view.order_public_id is None


def test_the_charge_skipped_email_in_english(runtime, smtp_server):
    mailbox_id = add_auto_renew(runtime, "pm_card_visa", notified=True, language="en").id
    number, _total = plan_change_order(runtime, mailbox_id, method="postal_slip")
    run_on(runtime, CHARGE_DAY)
    (skipped,) = [m for m in received(smtp_server) if m["X-PEC-Renewal-Kind"] == "charge-skipped"]
    assert skipped["Subject"] == f"Automatic charge not made: order {number} is awaiting payment"
    text = " ".join(text_of(skipped).split())
    assert "today we did not make the automatic renewal charge of the PEC mailbox" in text
    assert (
        f"your order {number} (" in text
        and "paid by postal slip) for renewing this mailbox is awaiting payment" in text
    )
    assert "If you cancel the order by 29 March 2027, the automatic charge will be made" in text
    html = skipped.get_body(("html",)).get_content()
    assert "See the order" in html and "/rinnova/" in html


def test_one_cycle_of_a_mailbox_never_has_two_orders_awaiting_payment(session_factory, settings):
    """The mailbox's own link and its account's link are two links; confirming the second order
    of the same mailbox and cycle is refused until the first is paid or cancelled."""
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        first = complete_order(session, settings, mailbox)
        session.commit()
        account_order = orders.start_order(
            session, RenewalLink(ACCOUNT, mailbox.account_id, mailbox.expires_on), TODAY, NOW
        )
        orders.choose_mailboxes(session, account_order, [orders.MailboxChoice(mailbox.id, mailbox.plan)], TODAY)
        orders.set_holder(session, account_order, orders.holder_form_data(account_order))
        orders.choose_payment(session, account_order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, account_order, NOW)
        session.commit()
        with pytest.raises(OrderValidationError) as refused:
            orders.confirm_order(session, account_order, now=NOW, today=TODAY, settings=settings)
        assert f"è già nell'ordine {first.order_number}" in refused.value.errors[f"plan-{mailbox.id}"]
        session.rollback()
        orders.cancel_order(session, session.get(RenewalOrder, first.id), settings=settings)
        session.commit()
        confirmed = orders.confirm_order(session, account_order, now=NOW, today=TODAY, settings=settings)
        assert confirmed.status == "awaiting_payment"
