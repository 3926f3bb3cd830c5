"""Auto-renew end to end, every outcome of a charge (PostgreSQL, SMTP on loopback, frozen clock)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import time_machine
from sqlalchemy import event, select

from tests.support.charges import (
    CHARGE_DAY,
    EXPIRES,
    add_auto_renew,
    at_morning,
    build_runtime,
    gateway_record,
    received,
    run_on,
    text_of,
    walk,
)
from worker.services import charges
from worker.store.models import ChargeIntent, Mailbox, OrderOrigin, OrderStatus, RenewalOrder

# -- Every outcome, end to end -------------------------------------------------------------------


def test_success_charges_once_moves_the_expiry_and_sends_a_receipt(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa", reference_email="anna@example.it")
    sent = walk(runtime, smtp_server, date(2027, 2, 25), date(2027, 4, 5))
    assert sent == [
        (date(2027, 3, 1), "charge-notice", "-30d"),
        (CHARGE_DAY, "charge-succeeded", "-7d"),
    ]
    (charge,) = gateway_record(runtime)
    price = charges.charge_price(mailbox)
    assert charge["outcome"] == "succeeded" and charge["amount_cents"] == price.total_cents
    assert charge["idempotency_key"] == f"renewal:{mailbox.id}:2027-03-31:1"
    assert price.total_cents == price.subtotal_cents + price.vat_cents and price.vat_percent == 22
    with runtime.session_factory() as session:
        renewed = session.get(Mailbox, mailbox.id)
        assert renewed.expires_on == date(2028, 3, 31)
        assert renewed.next_action_on == date(2028, 3, 1)  # the next cycle's charge notice
    notice, receipt = received(smtp_server)
    notice_text, receipt_text = text_of(notice), text_of(receipt)
    assert "Visa •••• 4242" in notice_text and "pm_card_visa" not in notice.as_string()
    assert "24 marzo 2027" in notice_text and "IVA 22% inclusa" in notice_text
    assert "/rinnovo-automatico/" in notice_text  # switch auto-renew off, replace the method
    assert "/rinnova/" not in notice_text
    assert "31 marzo 2028" in receipt_text and "Visa •••• 4242" in receipt_text
    assert "/rinnova/" not in receipt.as_string()


def test_paypal_ok(runtime, smtp_server):
    add_auto_renew(runtime, "paypal_ok", language="en")
    sent = walk(runtime, smtp_server, CHARGE_DAY - timedelta(days=1), CHARGE_DAY)
    assert sent == [
        (CHARGE_DAY - timedelta(days=1), "charge-notice", "-30d"),
        (CHARGE_DAY, "charge-succeeded", "-7d"),
    ]
    assert "PayPal" in text_of(received(smtp_server)[1])


def test_a_cycle_first_seen_on_the_charge_day_is_told_before_it_is_charged(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa")
    sent = walk(runtime, smtp_server, CHARGE_DAY, CHARGE_DAY + timedelta(days=1))
    assert sent == [
        (CHARGE_DAY, "charge-notice", "-30d"),
        (CHARGE_DAY + timedelta(days=1), "charge-succeeded", "-6d"),
    ]
    assert "25 marzo 2027" in text_of(received(smtp_server)[0])  # the charge date it announces
    assert [(r["outcome"], r["idempotency_key"]) for r in gateway_record(runtime)] == [
        ("succeeded", f"renewal:{mailbox.id}:2027-03-31:1")
    ]


def test_a_cycle_first_seen_the_day_before_expiry_is_told_then_falls_back_to_manual(runtime, smtp_server):
    add_auto_renew(runtime, "pm_card_visa")
    sent = walk(runtime, smtp_server, EXPIRES - timedelta(days=1), EXPIRES)
    assert [kind for _day, kind, _stage in sent] == ["charge-notice", "charge-failed"]
    assert gateway_record(runtime) == []


def test_a_missed_notice_is_sent_before_a_charge_on_time(runtime, smtp_server):
    add_auto_renew(runtime, "pm_card_visa")
    assert walk(runtime, smtp_server, date(2027, 3, 20), date(2027, 3, 24)) == [
        (date(2027, 3, 20), "charge-notice", "-30d"),
        (CHARGE_DAY, "charge-succeeded", "-7d"),
    ]


def test_a_job_that_missed_the_charge_day_charges_on_its_next_run(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa")
    run_on(runtime, date(2027, 3, 1))
    run_on(runtime, date(2027, 3, 27))  # nothing ran from the 2nd to the 26th
    assert [(r["outcome"], r["idempotency_key"]) for r in gateway_record(runtime)] == [
        ("succeeded", f"renewal:{mailbox.id}:2027-03-31:2")
    ]
    with runtime.session_factory() as session:
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 3, 31)


@pytest.mark.parametrize(
    "token, reason_text",
    [
        ("pm_card_chargeDeclined", "rifiutato"),
        ("pm_card_chargeDeclinedExpiredCard", "rifiutato"),
        ("paypal_declined", "rifiutato"),
    ],
)
def test_final_failure_is_not_retried_and_leads_to_an_unpaid_order_and_the_manual_schedule(
    runtime, smtp_server, token, reason_text
):
    mailbox = add_auto_renew(runtime, token)
    sent = walk(runtime, smtp_server, date(2027, 2, 25), date(2027, 4, 2))
    assert sent == [
        (date(2027, 3, 1), "charge-notice", "-30d"),
        (CHARGE_DAY, "charge-failed", "-7d"),  # takes the place of the -7d notice
        (date(2027, 3, 30), "expiry-notice", "-1d"),
        (date(2027, 3, 31), "expiry-notice", "0d"),
        (date(2027, 4, 1), "expired-notice", "+1d"),
    ]
    assert len(gateway_record(runtime)) == 1
    with runtime.session_factory() as session:
        order = session.scalar(select(RenewalOrder))
        assert order.status == OrderStatus.AWAITING_PAYMENT.value
        assert order.origin == OrderOrigin.AUTO_RENEW_FAILED.value
        assert (order.link_target_id, order.link_cycle) == (mailbox.id, EXPIRES)
        assert session.get(Mailbox, mailbox.id).expires_on == EXPIRES
    failed = received(smtp_server)[1]
    body = text_of(failed)
    assert order.order_number in body and reason_text in body and "/rinnova/" in body


def test_authentication_never_given_fails_on_the_last_charge_day_with_an_unpaid_order(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_authenticationRequired")
    sent = walk(runtime, smtp_server, date(2027, 2, 25), date(2027, 4, 1))
    assert sent == [
        (date(2027, 3, 1), "charge-notice", "-30d"),
        (CHARGE_DAY, "charge-authentication-required", "-7d"),
        (date(2027, 3, 30), "charge-failed", "-1d"),  # the last retry day; no attempt in between
        (date(2027, 3, 31), "expiry-notice", "0d"),
        (date(2027, 4, 1), "expired-notice", "+1d"),
    ]
    assert [row["outcome"] for row in gateway_record(runtime)] == ["requires_authentication"]
    asked = text_of(received(smtp_server)[1])
    assert "/rinnovo-automatico/autenticazione/" in asked and "30 marzo 2027" in asked
    with runtime.session_factory() as session:
        order = session.scalar(select(RenewalOrder))
        assert (order.status, order.origin) == (OrderStatus.AWAITING_PAYMENT.value, OrderOrigin.AUTO_RENEW_FAILED.value)
        assert session.get(Mailbox, mailbox.id).expires_on == EXPIRES
    failed = text_of(received(smtp_server)[2])
    assert order.order_number in failed and "autenticazione" in failed and "/rinnova/" in failed


def test_soft_decline_is_retried_then_fails_once(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_chargeDeclinedInsufficientFunds")
    sent = walk(runtime, smtp_server, date(2027, 3, 20), date(2027, 4, 1))
    assert sent == [
        (date(2027, 3, 20), "charge-notice", "-30d"),
        (date(2027, 3, 30), "charge-failed", "-1d"),
        (date(2027, 3, 31), "expiry-notice", "0d"),
        (date(2027, 4, 1), "expired-notice", "+1d"),
    ]
    record = gateway_record(runtime)
    assert [r["idempotency_key"] for r in record] == [f"renewal:{mailbox.id}:2027-03-31:{n}" for n in (1, 2, 3, 4)]
    assert {r["at"][:10] for r in record} == {"2027-03-24", "2027-03-26", "2027-03-28", "2027-03-30"}
    assert all(r["outcome"] == "soft_decline" for r in record)
    assert "tentativi" in text_of(received(smtp_server)[1])


def test_no_payment_method_fails_without_calling_the_gateway(runtime, smtp_server):
    add_auto_renew(runtime, None)
    assert walk(runtime, smtp_server, CHARGE_DAY, CHARGE_DAY) == [(CHARGE_DAY, "charge-failed", "-7d")]
    assert gateway_record(runtime) == []


def test_card_expiring_notice_once_per_cycle(runtime, smtp_server):
    add_auto_renew(runtime, "pm_card_visa", card_expires_on=date(2027, 2, 28))
    sent = walk(runtime, smtp_server, date(2026, 12, 20), date(2027, 3, 24))
    assert sent == [
        (date(2026, 12, 31), "card-expiring", "-3m"),
        (date(2027, 3, 1), "charge-notice", "-30d"),
        (CHARGE_DAY, "charge-succeeded", "-7d"),
    ]
    card_mail = received(smtp_server)[0]
    assert "28 febbraio 2027" in text_of(card_mail) and "/rinnovo-automatico/" in text_of(card_mail)


def test_timeout_is_reconciled_without_a_second_charge(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_sandbox_timeout", notified=True)
    summary = run_on(runtime, CHARGE_DAY)
    assert summary.charges.charges == 1 and summary.charges.lookups == 1
    assert [r["outcome"] for r in gateway_record(runtime)] == ["succeeded"]
    with runtime.session_factory() as session:
        assert session.get(Mailbox, mailbox.id).expires_on == date(2028, 3, 31)
        (intent,) = session.scalars(select(ChargeIntent)).all()
        assert intent.status == "succeeded" and intent.reference.startswith("sbx_ch_")
    for day in (date(2027, 3, 25), date(2027, 3, 26)):
        run_on(runtime, day)
    assert len(gateway_record(runtime)) == 1
    assert [m["X-PEC-Renewal-Kind"] for m in received(smtp_server)] == ["charge-succeeded"]


def test_the_same_day_twice_charges_once(runtime, smtp_server):
    add_auto_renew(runtime, "pm_card_visa", notified=True)
    run_on(runtime, CHARGE_DAY)
    second = run_on(runtime, CHARGE_DAY)
    assert second.charges.charges == 0
    assert len(gateway_record(runtime)) == 1 and len(smtp_server.messages) == 1


def test_a_configured_charge_plan_moves_the_notice_the_charge_and_the_retries(
    tmp_path, database_url, session_factory, smtp_server
):
    rt = build_runtime(
        tmp_path, database_url, session_factory, smtp_server, charge_notice_days="20", charge_days="10,2"
    )
    try:
        soft = add_auto_renew(rt, "pm_card_chargeDeclinedInsufficientFunds", reference_email="soft@example.it")
        sent = walk(rt, smtp_server, date(2027, 3, 1), date(2027, 3, 31))
        assert sent == [
            (date(2027, 3, 11), "charge-notice", "-20d"),
            (date(2027, 3, 29), "charge-failed", "-2d"),  # the last retry declined: retries exhausted
            (date(2027, 3, 30), "expiry-notice", "-1d"),  # then the manual schedule
            (date(2027, 3, 31), "expiry-notice", "0d"),
        ]
        assert [r["idempotency_key"] for r in gateway_record(rt)] == [
            f"renewal:{soft.id}:2027-03-31:1",
            f"renewal:{soft.id}:2027-03-31:2",
        ]
        assert [r["at"][:10] for r in gateway_record(rt)] == ["2027-03-21", "2027-03-29"]
        assert "21 marzo 2027" in text_of(received(smtp_server)[0])  # the charge date the notice announces
    finally:
        rt.close()


def test_a_charge_and_its_receipt_are_a_few_sqlalchemy_statements(runtime, smtp_server, engine):
    """The charge work is SQLAlchemy statements on the engine's connections, and few of them: the
    claim (the mailbox locked with its cycle, the holder's own order awaiting payment looked for,
    the intent), the sandbox's record, then the record
    (the mailbox locked again, the intent's answer, the receipt through the outbox's writer and
    its ledger row, the platform's event, the new expiry), and the batch's numbering of its invoices.  Each
    more would be a round trip per charge (bench/charges.py)."""
    first, second = (add_auto_renew(runtime, "pm_card_visa", notified=True).id for _ in range(2))
    with runtime.session_factory() as session, session.begin():
        for mailbox_id in (first, second):
            session.get(Mailbox, mailbox_id).next_action_on = CHARGE_DAY  # as the rule set it
    statements: list[str] = []

    def seen(_connection, _cursor, statement, *_args):
        verb, _, rest = statement.lstrip().partition(" ")
        table = rest.split("FROM ", 1)[1] if verb == "SELECT" else rest.replace("INTO ", "", 1)
        statements.append(f"{verb} {table.split()[0]}")

    def charge(mailbox_id: int) -> charges.ChargesResult:
        with time_machine.travel(at_morning(CHARGE_DAY), tick=False):
            return charges.run_charges(
                runtime.session_factory,
                runtime.gateway,
                [mailbox_id],
                today=CHARGE_DAY,
                clock=runtime.clock,
                mail_domain=runtime.mail_domain,
            )

    charge(first)  # its receipt creates the installation id (the tests empty every table)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        result = charge(second)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert result.outcomes == {"succeeded": 1}
    assert statements == [
        "SELECT mailboxes",  # locked, with its holder, ledger rows and intents
        "SELECT renewal_orders",  # no order of the holder's awaits payment for the cycle
        "INSERT charge_intents",  # the claim, committed before the gateway is called
        "INSERT sandbox_charges",  # the gateway
        "SELECT mailboxes",
        "UPDATE charge_intents",  # the answer
        "INSERT invoices",  # its invoice (waiting here: no seller settings)
        "SELECT worker_state",  # the receipt: the installation id of its Message-ID,
        "INSERT outbox_messages",  # its outbox row,
        "INSERT outbox_queue",  # its place in the relay's queue,
        "INSERT notice_ledger",  # its ledger row
        "INSERT platform_events",  # the platform's mailbox.renewed
        "UPDATE mailboxes",  # the new expiry
        "UPDATE mailbox_schedule",  # and the next cycle's first step
        "SELECT invoices",  # the batch's numbering step, once for the batch: none to number (its invoice waits)
    ]
