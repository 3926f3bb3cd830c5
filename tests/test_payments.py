"""Payment registration on the real PostgreSQL: by hand (renewals, refusals, holders) and at a gateway checkout."""

from __future__ import annotations

import email
import email.policy
from datetime import date

import pytest
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.orders import NOW, TODAY, link_for
from tests.support.payments import LATER, place_order, snapshot
from tests.support.rows import count
from worker.gateways.sandbox import SandboxGateway
from worker.mail.emails import EmailRenderer
from worker.rules.links import ACCOUNT, LinkSigner, RenewalLink
from worker.rules.schedule import DEFAULT_STAGES, first_action_on
from worker.services import orders, payments
from worker.services.orders import LinkState
from worker.services.payments import PaymentRefused
from worker.store.models import Holder, Mailbox, OutboxMessage, Payment, RenewalOrder, SandboxCharge, SandboxMethod


def register(session, settings, order, *, amount=None, reference="CRO 0001", method="bank_transfer", **kwargs):
    return payments.register_payment(
        session,
        order_number=order.order_number,
        amount_cents=order.total_cents if amount is None else amount,
        method=method,
        reference=reference,
        now=LATER,
        today=date(2027, 3, 2),
        settings=settings,
        **kwargs,
    )


# -- register_payment ---------------------------------------------------------------------------------


def test_registration_renews_from_the_old_expiry_and_queues_the_email(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), plan="pro")
        mailbox.extra_archive_gb = 4
        order = place_order(session, settings, mailbox, years=2, plan="premium", extra_space_gb=1, extra_archive_gb=2)
        result = register(session, settings, order)
        session.commit()
        assert result.registered
        assert [(r.address, r.old_expires_on, r.new_expires_on) for r in result.renewed] == [
            (mailbox.address, date(2027, 4, 30), date(2029, 4, 30))
        ]
        session.expire_all()
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.expires_on, mailbox.plan, mailbox.extra_space_gb, mailbox.extra_archive_gb) == (
            date(2029, 4, 30),
            "premium",
            1,
            2,
        )
        assert mailbox.renewal_years == 2
        assert not mailbox.auto_renew  # a bank transfer does not switch it on
        assert mailbox.next_action_on == first_action_on(DEFAULT_STAGES, date(2029, 4, 30)) == date(2029, 1, 30)
        order = session.get(RenewalOrder, order.id)
        assert (order.status, order.paid_at) == ("paid", LATER)
        assert order.lines[0].new_expires_on == date(2029, 4, 30)
        # The old link now says "already renewed".
        view = orders.describe_link(session, link_for(mailbox, date(2027, 4, 30)), date(2027, 3, 2))
        assert (view.state, view.new_expires_on) == (LinkState.ALREADY_RENEWED, date(2029, 4, 30))

        completed = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "renewal-completed"))
        signer = LinkSigner(settings.secret_keys, settings.base_url, settings.link_max_age_days)
        rendered = EmailRenderer(mail_from=settings.mail_from, signer=signer).render(
            kind=completed.kind,
            stage=completed.stage,
            language=completed.language,
            to_address=completed.to_address,
            message_id=completed.message_id,
            context=completed.context,
            now=LATER,
        )
        message = email.message_from_bytes(rendered.as_bytes(), policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",)).get_content()
        assert message["Subject"] == f"Rinnovo completato: la casella PEC {mailbox.address} scade ora il 30 aprile 2029"
        assert "Nuova scadenza: 30 aprile 2029" in text
        assert order.order_number in text
        assert "Tipologia: Premium (prima: Pro)" in text


def test_29_february_moves_to_28_february(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2028, 2, 29))
        order = place_order(session, settings, mailbox, years=1, today=date(2027, 12, 1))
        payments.register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference="CRO 29",
            now=LATER,
            today=date(2027, 12, 2),
            settings=settings,
        )
        assert session.get(Mailbox, mailbox.id).expires_on == date(2029, 2, 28)
        # and four years on, the 28th stays the 28th (counted from the old expiry, not clamped back).
        other = make_mailbox(session, expires_on=date(2028, 2, 29))
        order = place_order(session, settings, other, years=4, today=date(2027, 12, 1))
        payments.register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference="CRO 30",
            now=LATER,
            today=date(2027, 12, 2),
            settings=settings,
        )
        assert session.get(Mailbox, other.id).expires_on == date(2032, 2, 29)


def test_renewed_after_expiry_counts_from_the_old_expiry(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 1, 20))  # expired 40 days ago
        order = place_order(session, settings, mailbox, years=1)
        register(session, settings, order)
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 1, 20)


def test_registering_the_same_payment_twice_registers_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox)
        register(session, settings, order, reference="CRO 42")
        session.commit()
    with session_factory() as session:
        order = session.get(RenewalOrder, order.id)
        result = register(session, settings, order, reference="CRO  42")  # whitespace is normalised
        session.commit()
        assert not result.registered
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)
        assert count(session, Payment) == 1
        assert session.scalar(select(func.count()).where(OutboxMessage.kind == "renewal-completed")) == 1
        # Another payment of an order already paid is refused: it must be refunded.
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order, reference="CRO 43")
        assert refused.value.code == "already_paid"
        assert "refund" in str(refused.value)
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order, reference="CRO 42", amount=100)
        assert refused.value.code == "reference_reused"


def test_wrong_amount_is_refused_and_changes_nothing(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox)
        before = snapshot(session, mailbox.id)
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order, amount=order.total_cents - 1)
        assert refused.value.code == "wrong_amount"
        assert str(refused.value) == (
            f"{order.order_number}: the amount is 6.09 EUR but the order's total is 6.10 EUR; nothing registered"
        )
        session.rollback()
        assert snapshot(session, mailbox.id) == before
        assert count(session, Payment) == 0
        assert session.get(RenewalOrder, order.id).status == "awaiting_payment"


@pytest.mark.parametrize(
    "number, code",
    [("PEC-2027-999999", "unknown_order"), ("", "unknown_order")],
)
def test_unknown_order(session_factory, settings, number, code):
    with session_factory() as session:
        with pytest.raises(PaymentRefused) as refused:
            payments.register_payment(
                session,
                order_number=number,
                amount_cents=610,
                method="bank_transfer",
                reference="x",
                now=LATER,
                today=TODAY,
                settings=settings,
            )
        assert refused.value.code == code


def test_draft_order_cannot_be_paid(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        order.order_number = "PEC-2027-000777"  # never happens; a draft has no number
        order.total_cents = 610
        with pytest.raises(PaymentRefused) as refused:
            register(session, settings, order)
        assert refused.value.code == "not_payable"


def test_two_orders_for_one_mailbox_renew_it_once(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), reference_email="uno@example.it")
        first = place_order(session, settings, mailbox)
        account_order = orders.start_order(
            session, RenewalLink(ACCOUNT, mailbox.account_id, mailbox.expires_on), TODAY, NOW
        )
        orders.choose_mailboxes(session, account_order, [], TODAY)
        orders.set_holder(session, account_order, orders.holder_form_data(account_order))
        orders.choose_payment(session, account_order, "bank_transfer", 1, TODAY)
        orders.accept_terms(session, account_order, NOW)
        # The mailbox is in the first order, awaiting payment: the second is not confirmed.
        with pytest.raises(orders.OrderValidationError, match=first.order_number):
            orders.confirm_order(session, account_order, now=NOW, today=TODAY, settings=settings)
        register(session, settings, first)
        # Once the first is paid, the mailbox was renewed: still not confirmed, and never paid.
        with pytest.raises(orders.OrderValidationError, match="rinnovata o modificata"):
            orders.confirm_order(session, account_order, now=NOW, today=TODAY, settings=settings)
        assert account_order.status == "draft" and account_order.order_number is None
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 4, 30)


def test_payment_after_deletion_is_refused(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2026, 12, 3))  # deleted from 4 March 2027
        order = place_order(session, settings, mailbox)
        with pytest.raises(PaymentRefused) as refused:
            payments.register_payment(
                session,
                order_number=order.order_number,
                amount_cents=order.total_cents,
                method="bank_transfer",
                reference="late",
                now=LATER,
                today=date(2027, 3, 4),
                settings=settings,
            )
        assert refused.value.code == "mailbox_deleted"


def test_downgrade_drops_the_archive_and_edited_holder_takes_effect(session_factory, settings):
    holder = {
        "name": "Rossi S.r.l.",
        "kind": "company",
        "reference_email": "amministrazione@rossi.example.it",
        "vat_number": "00743110157",
        "einvoice_code": "ABC1234",
    }
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30), plan="premium")
        mailbox.extra_archive_gb = 5
        old_holder = mailbox.holder_id
        order = place_order(session, settings, mailbox, plan="standard", holder=holder)
        register(session, settings, order)
        session.commit()
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.plan, mailbox.extra_archive_gb) == ("standard", 0)
        assert mailbox.holder_id != old_holder
        new_holder = session.get(Holder, mailbox.holder_id)
        assert (new_holder.kind, new_holder.vat_number, new_holder.sdi_code) == ("company", "00743110157", "ABC1234")
        assert new_holder.account_id == mailbox.account_id
        # Notices now go to the new reference address (the scan reads the mailbox's copy).
        assert mailbox.reference_email == "amministrazione@rossi.example.it"


def test_card_payment_switches_auto_renew_on(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="card", years=3)
        register(session, settings, order, method="card", reference="sandbox:order:1:1", payment_token="pm_card_visa")
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.auto_renew, mailbox.payment_method, mailbox.renewal_years) == (True, "pm_card_visa", 3)
        assert mailbox.expires_on == date(2030, 4, 30)


# -- Card and PayPal at checkout -----------------------------------------------------------------------


def test_checkout_with_the_sandbox_gateway(session_factory, settings):
    gateway = SandboxGateway(session_factory)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="card", years=2)
        declined = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_chargeDeclined", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert (declined.outcome, declined.succeeded) == ("hard_decline", False)
        assert session.get(Mailbox, mailbox.id).expires_on == date(2027, 4, 30)
        paid = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert paid.succeeded
        again = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert again.outcome == "already_paid"
    with session_factory() as session:
        charges = session.scalars(select(SandboxCharge).order_by(SandboxCharge.id)).all()
        assert [(c.idempotency_key, c.outcome, c.amount_cents) for c in charges] == [
            (f"order:{order.id}:1", "hard_decline", 1220),
            (f"order:{order.id}:2", "succeeded", 1220),
        ]
        mailbox = session.get(Mailbox, mailbox.id)
        assert (mailbox.expires_on, mailbox.auto_renew, mailbox.renewal_years) == (date(2029, 4, 30), True, 2)
        # The sandbox kept the card as a stored method, as Stripe keeps a PaymentMethod.
        assert mailbox.payment_method == gateway.keep_charged_method(f"order:{order.id}:2").token
        assert mailbox.payment_method.startswith("pm_sbx_")
        assert session.scalar(select(Payment.reference)) == f"sandbox:order:{order.id}:2"


def test_checkout_timeout_is_reconciled_without_a_second_charge(session_factory, settings):
    gateway = SandboxGateway(session_factory)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = place_order(session, settings, mailbox, method="paypal")
        lost = payments.pay_order_with_gateway(
            session, gateway, order, "pm_sandbox_timeout", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert (lost.outcome, lost.succeeded) == ("unknown", False)
        assert session.get(RenewalOrder, order.id).gateway_state == "unknown"
        # The holder tries again (with another card even): the lost charge is found and registered.
        found = payments.pay_order_with_gateway(
            session, gateway, order, "pm_card_visa", method="card", now=LATER, today=TODAY, settings=settings
        )
        assert found.succeeded
    with session_factory() as session:
        assert count(session, SandboxCharge) == 1
        mailbox = session.get(Mailbox, mailbox.id)
        assert mailbox.expires_on == date(2028, 4, 30)
        # The method that was charged, kept by the sandbox: it answers as pm_sandbox_timeout.
        method = session.scalar(select(SandboxMethod).where(SandboxMethod.method_id == mailbox.payment_method))
        assert method.behaviour == "pm_sandbox_timeout"
