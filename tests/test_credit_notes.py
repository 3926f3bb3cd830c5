"""Credit notes of refunds: they refer to their invoice, follow the gateway's answer or webhook, never exceed it."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from click.testing import CliRunner

from tests.support import fatturapa
from tests.support.gateway_webhooks import StripeServer
from tests.support.invoices import (
    PAID_AT,
    export,
    holder_mailbox,
    invoices,
    name_of,
    pay,
    seller_env,
)
from tests.support.orders import TODAY, complete_order
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.services import payments
from worker.services.invoices import record_credit_note
from worker.services.invoices.export import export_invoices
from worker.services.payments.gateway_events import GatewayNotice, NoticeKind
from worker.services.payments.refunds import REQUESTED, start_refund
from worker.services.payments.webhooks import record_event
from worker.store.models import GatewayRefund, RenewalOrder


def test_a_refund_gets_a_credit_note_that_refers_to_its_invoice(session_factory, engine, seller_settings, tmp_path):
    with session_factory() as session:
        order = complete_order(session, seller_settings, holder_mailbox(session, "company", expires_on=TODAY))
        pay(session, seller_settings, order, "card")
        session.commit()
        [invoice] = invoices(session)
    with engine.begin() as connection:
        note = record_credit_note(
            connection,
            invoice_id=invoice.id,
            refunded_cents=300,
            refund_key="refund:1",
            seller=seller_settings.seller,
            today=TODAY + timedelta(days=2),
            now=PAID_AT,
        )
        again = record_credit_note(
            connection,
            invoice_id=invoice.id,
            refunded_cents=300,
            refund_key="refund:1",
            seller=seller_settings.seller,
            today=TODAY + timedelta(days=2),
            now=PAID_AT,
        )
    assert again == note and note.document_number == "2/2027"
    result = export(seller_settings, engine, tmp_path / "out")
    assert len(result.written) == 2
    root = fatturapa.validate((tmp_path / "out" / name_of(note.id)).read_bytes())
    assert fatturapa.text(root, ".//TipoDocumento") == "TD04"
    assert fatturapa.text(root, ".//DatiFattureCollegate/IdDocumento") == "1/2027"
    assert fatturapa.text(root, ".//ImportoTotaleDocumento") == "3.00"


def paid_by_card(session, seller_settings, kind: str, payment_intent: str, *, today: date) -> RenewalOrder:
    """An order of a ``kind`` holder's mailbox, paid by card on Stripe (``stripe:{payment_intent}``) and invoiced."""
    mailbox = holder_mailbox(session, kind, expires_on=today + timedelta(days=40))
    order = complete_order(session, seller_settings, mailbox, method="card", today=today)
    payments.register_payment(
        session,
        order_number=order.order_number,
        amount_cents=order.total_cents,
        method="card",
        reference=f"stripe:{payment_intent}",
        now=PAID_AT,
        today=today,
        settings=seller_settings,
    )
    return order


def test_a_requested_refund_through_the_gateway_gets_its_credit_note(
    session_factory, database_url, seller_settings, tmp_path
):
    today = date.today()  # the CLI runs on the wall clock
    with session_factory() as session:
        order = paid_by_card(session, seller_settings, "company", "pi_invoiced", today=today)
        session.commit()
    stripe = StripeServer().start()
    try:
        stripe.paid("pi_invoiced", order.total_cents, order_number=order.order_number)
        env = {
            **seller_env(seller_settings),
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_PAYMENT_GATEWAY": "stripe",
            "PEC_RENEWAL_STRIPE_API_KEY": "sk_test_local",
            "PEC_RENEWAL_STRIPE_API_BASE": stripe.url,
        }
        result = CliRunner().invoke(main, ["payments", "refund", order.order_number, "--amount", "1,22"], env=env)
        assert result.exit_code == 0, result.output
    finally:
        stripe.stop()
    with session_factory() as session:
        invoice, note = invoices(session)
    assert (note.kind, note.status, note.corrects_invoice_id, note.paid_cents) == ("TD04", "issued", invoice.id, 122)
    assert (note.subtotal_cents, note.vat_cents) == (100, 22)
    out = tmp_path / "out"
    export_invoices(
        engine_of(session_factory), seller_settings.seller, since=today, out_dir=out, today=today, now=PAID_AT
    )
    root = fatturapa.validate((out / name_of(note.id)).read_bytes())
    assert fatturapa.text(root, ".//DatiFattureCollegate/IdDocumento") == invoice.document_number


def engine_of(session_factory):
    with session_factory() as session:
        return session.get_bind()


def test_a_refund_the_gateway_confirms_later_by_webhook_gets_its_credit_note(session_factory, seller_settings):
    """A requested refund the gateway first accepted as pending: its ``charge.refunded`` event settles
    it, and the credit note is written with that event, as with an immediate success."""
    with session_factory() as session:
        order = paid_by_card(session, seller_settings, "private", "pi_later", today=TODAY)
        refund = start_refund(
            session,
            gateway="stripe",
            order=order,
            payment_reference="pi_later",
            amount_cents=order.total_cents,
            currency="EUR",
            kind=REQUESTED,
            reason="the holder asked",
            now=PAID_AT,
        )
        refund.status = "pending"
        session.commit()
        assert [row.kind for row in invoices(session)] == ["TD01"]
    notice = GatewayNotice(
        gateway="stripe",
        event_id="evt_refunded_later",
        event_type="charge.refunded",
        kind=NoticeKind.REFUNDED,
        order_number=order.order_number,
        payment_reference="pi_later",
    )
    for _ in range(2):  # the event again changes nothing: one credit note
        with session_factory() as session:
            record_event(session, notice, now=PAID_AT, today=TODAY, settings=seller_settings)
            session.commit()
    with session_factory() as session:
        invoice, note = invoices(session)
        status = session.get(GatewayRefund, refund.id).status
    assert status == "succeeded"
    assert (note.kind, note.corrects_invoice_id, note.paid_cents) == ("TD04", invoice.id, order.total_cents)


def test_the_credit_notes_of_an_invoice_never_add_up_to_more_than_was_paid(session_factory, engine, seller_settings):
    with session_factory() as session:
        order = complete_order(session, seller_settings, holder_mailbox(session, "company", expires_on=TODAY))
        pay(session, seller_settings, order, "card")
        session.commit()
        [invoice] = invoices(session)

    def note(key: str, cents: int):
        with engine.begin() as connection:
            return record_credit_note(
                connection,
                invoice_id=invoice.id,
                refunded_cents=cents,
                refund_key=key,
                seller=seller_settings.seller,
                today=TODAY,
                now=PAID_AT,
            )

    note("refund:1", invoice.paid_cents - 100)
    with pytest.raises(ValueError, match="1.00 EUR of it is not credited yet"):
        note("refund:2", 101)
    assert note("refund:3", 100).document_number == "3/2027"
    with session_factory() as session:
        assert sorted(row.paid_cents for row in invoices(session)) == [
            100,
            invoice.paid_cents - 100,
            invoice.paid_cents,
        ]
