"""The lifetime of an auto-renew mailbox: two cycles, the first over 29 February 2028, day by day."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from tests.support.charges import add_auto_renew, gateway_record, received, walk
from worker.gateways.sandbox import list_charges
from worker.services.payments import register_payment
from worker.store.models import Mailbox, OrderStatus, RenewalOrder


def test_two_cycles_over_29_february(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa", expires_on=date(2028, 2, 29), reference_email="anna@example.it")
    sent = walk(runtime, smtp_server, date(2027, 11, 1), date(2029, 3, 10))
    assert sent == [
        (date(2028, 1, 30), "charge-notice", "-30d"),
        (date(2028, 2, 22), "charge-succeeded", "-7d"),
        (date(2029, 1, 29), "charge-notice", "-30d"),
        (date(2029, 2, 21), "charge-succeeded", "-7d"),
    ]
    assert all(message["To"] == "anna@example.it" for message in received(smtp_server))
    record = gateway_record(runtime)
    assert [(r["idempotency_key"], r["outcome"]) for r in record] == [
        (f"renewal:{mailbox.id}:2028-02-29:1", "succeeded"),
        (f"renewal:{mailbox.id}:2029-02-28:1", "succeeded"),
    ]
    with runtime.session_factory() as session:
        renewed = session.get(Mailbox, mailbox.id)
        assert renewed.expires_on == date(2030, 2, 28)  # 29 Feb 2028 + 1 = 28 Feb 2029, + 1 = 28 Feb 2030
        assert renewed.next_action_on == date(2030, 1, 29)
    receipts = [m for m in received(smtp_server) if m["X-PEC-Renewal-Kind"] == "charge-succeeded"]
    assert "28 febbraio 2029" in receipts[0].get_body(("plain",)).get_content()


def test_charge_failed_then_the_unpaid_order_is_paid_and_auto_renew_resumes(runtime, smtp_server):
    """Hard decline -> unpaid order -> paid by bank transfer -> the next cycle is charged again."""
    mailbox = add_auto_renew(runtime, "pm_card_chargeDeclined", expires_on=date(2027, 3, 31))
    sent = walk(runtime, smtp_server, date(2027, 3, 20), date(2027, 3, 30))
    assert [(kind, stage) for _day, kind, stage in sent] == [
        ("charge-notice", "-30d"),
        ("charge-failed", "-7d"),
        ("expiry-notice", "-1d"),
    ]
    with runtime.session_factory() as session, session.begin():
        order = session.scalar(select(RenewalOrder))
        assert order.status == OrderStatus.AWAITING_PAYMENT.value
        register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference="CRO 123",
            now=runtime.clock(),
            today=date(2027, 3, 30),
            settings=runtime.settings,
        )
        holder_mailbox = session.get(Mailbox, mailbox.id)
        assert holder_mailbox.expires_on == date(2028, 3, 31)
        holder_mailbox.payment_method = "pm_card_visa"  # the holder updated the card
        holder_mailbox.auto_renew = True
    runtime.relay.deliver_due()
    before = len(smtp_server.messages)
    later = walk(runtime, smtp_server, date(2027, 3, 31), date(2028, 3, 25))
    kinds = [(kind, stage) for _day, kind, stage in later]
    assert ("charge-notice", "-30d") in kinds and ("charge-succeeded", "-7d") in kinds
    assert not any(kind in ("expiry-notice", "expired-notice") for kind, _ in kinds)  # the old cycle is over
    assert len(smtp_server.messages) >= before
    assert [r["outcome"] for r in list_charges(runtime.session_factory)] == ["hard_decline", "succeeded"]
