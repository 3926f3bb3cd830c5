"""Auto-renew: the pure rule, and every outcome end to end (PostgreSQL, SMTP on loopback, frozen clock)."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import date, timedelta

import pytest
import time_machine
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select

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
from tests.support.settings import make_settings
from worker.logs import configure_logging, log_context, remove_logging
from worker.rules import auto_renew
from worker.rules.auto_renew import AttemptRecord, decide_auto_renew
from worker.rules.schedule import DEFAULT_STAGES, Stage
from worker.services import charges
from worker.services.runtime import POOL_SIZE, Runtime, pool_size
from worker.store.models import (
    ChargeIntent,
    Mailbox,
    NoticeLedgerEntry,
    OrderOrigin,
    OrderStatus,
    RenewalOrder,
    SandboxCharge,
)

# -- The pure rule ---------------------------------------------------------------------------


def decide(today: date, *, sent=frozenset(), attempts=(), failed_on=None, card=None, method=True, expires=EXPIRES):
    return decide_auto_renew(
        stages=DEFAULT_STAGES,
        expires_on=expires,
        today=today,
        card_expires_on=card,
        has_payment_method=method,
        sent=frozenset(sent),
        failed_on=failed_on,
        attempts=tuple(attempts),
    )


class TestDecideAutoRenew:
    def test_nothing_before_the_charge_notice(self):
        decision = decide(date(2027, 1, 10))
        assert (decision.kind, decision.charge, decision.skip_reason) == (None, None, "auto-renew")
        assert decision.next_action_on == date(2027, 3, 1)

    def test_charge_notice_thirty_days_before(self):
        decision = decide(date(2027, 3, 1))
        assert (decision.kind, decision.stage.name, decision.next_action_on) == ("charge-notice", "-30d", CHARGE_DAY)

    def test_missed_charge_notice_goes_late_but_before_the_charge(self):
        assert decide(date(2027, 3, 20)).kind == "charge-notice"
        assert decide(date(2027, 3, 20), sent={("-30d", "charge-notice")}).kind is None

    def test_card_expiring_as_early_as_the_window_and_once(self):
        card = date(2027, 2, 28)
        decision = decide(date(2026, 12, 31), card=card)
        assert (decision.kind, decision.stage.name) == ("card-expiring", "-3m")
        after = decide(date(2027, 1, 5), card=card, sent={("-3m", "card-expiring")})
        assert after.kind is None and after.next_action_on == date(2027, 3, 1)

    def test_card_expiring_waits_a_day_behind_the_charge_notice(self):
        card = date(2027, 2, 28)
        decision = decide(date(2027, 3, 1), card=card)
        assert decision.kind == "charge-notice" and decision.next_action_on == date(2027, 3, 2)
        later = decide(date(2027, 3, 2), card=card, sent={("-30d", "charge-notice")})
        assert (later.kind, later.stage.name) == ("card-expiring", "-29d")

    def test_card_valid_on_the_charge_date_gets_no_card_notice(self):
        assert decide(date(2026, 12, 31), card=date(2027, 3, 31)).kind is None

    def test_charge_on_the_day_and_later_if_missed(self):
        told = {("-30d", "charge-notice")}
        assert (decide(CHARGE_DAY, sent=told).charge, decide(CHARGE_DAY, sent=told).attempt) == ("charge", 1)
        later = decide(date(2027, 3, 29), sent=told)
        assert (later.charge, later.attempt) == ("charge", 3)

    def test_never_charged_before_the_charge_notice(self):
        decision = decide(CHARGE_DAY)
        assert (decision.charge, decision.kind, decision.next_action_on) == (None, "charge-notice", date(2027, 3, 25))

    def test_soft_decline_retries_on_the_schedule(self):
        soft = [AttemptRecord(1, "soft_decline", CHARGE_DAY)]
        waiting = decide(date(2027, 3, 25), attempts=soft)
        assert (waiting.charge, waiting.next_action_on) == (None, date(2027, 3, 26))
        assert (decide(date(2027, 3, 26), attempts=soft).attempt) == 2

    def test_retries_exhausted_fail(self):
        attempts = [AttemptRecord(n, "soft_decline", CHARGE_DAY) for n in (1, 2, 3, 4)]
        assert decide(date(2027, 3, 30), attempts=attempts).charge == "fail"

    def test_a_hard_decline_is_not_retried(self):
        assert decide(date(2027, 3, 24), attempts=[AttemptRecord(1, "hard_decline", CHARGE_DAY)]).charge == "fail"

    def test_a_charge_awaiting_authentication_waits_for_the_last_charge_day_without_a_new_attempt(self):
        waiting = [AttemptRecord(1, "requires_authentication", CHARGE_DAY)]
        for day in (CHARGE_DAY, date(2027, 3, 26), date(2027, 3, 29)):
            decision = decide(day, sent={("-30d", "charge-notice")}, attempts=waiting)
            assert (decision.charge, decision.skip_reason) == (None, "awaiting-authentication")
            assert decision.next_action_on == date(2027, 3, 30)  # the last retry day, 1 day before expiry
        assert decide(date(2027, 3, 30), attempts=waiting).charge == "fail"

    def test_authentication_asked_on_the_last_charge_day_waits_one_day(self):
        asked = [AttemptRecord(4, "requires_authentication", date(2027, 3, 30))]
        decision = decide(date(2027, 3, 30), attempts=asked)
        assert (decision.charge, decision.next_action_on) == (None, EXPIRES)
        assert decide(EXPIRES, attempts=asked).charge == "fail"

    @pytest.mark.parametrize("status", ["started", "unknown"])
    def test_unresolved_intent_is_reconciled_before_anything_else(self, status):
        decision = decide(date(2027, 3, 26), attempts=[AttemptRecord(1, status, CHARGE_DAY)])
        assert (decision.charge, decision.attempt) == ("reconcile", 1)

    def test_no_charge_on_or_after_expiry(self):
        assert decide(EXPIRES).charge == "fail"

    def test_after_charge_failed_the_manual_schedule_from_the_next_stage(self):
        failed = {("-7d", "charge-failed")}
        assert decide(date(2027, 3, 25), sent=failed, failed_on=CHARGE_DAY).next_action_on == date(2027, 3, 30)
        decision = decide(date(2027, 3, 30), sent=failed, failed_on=CHARGE_DAY)
        assert (decision.kind, decision.stage.name) == ("expiry-notice", "-1d")

    def test_failure_on_a_retry_day_does_not_bring_back_the_earlier_stages(self):
        failed = {("-5d", "charge-failed")}
        decision = decide(date(2027, 3, 27), sent=failed, failed_on=date(2027, 3, 26))
        assert decision.kind is None and decision.next_action_on == date(2027, 3, 30)

    def test_deleted(self):
        assert decide(EXPIRES + timedelta(days=91)).skip_reason == "deleted"

    @hypothesis_settings(max_examples=300, deadline=None)
    @given(
        expires=st.dates(min_value=date(2026, 1, 1), max_value=date(2032, 12, 31)),
        offset=st.integers(min_value=-120, max_value=100),
        card_offset=st.one_of(st.none(), st.integers(min_value=-200, max_value=200)),
    )
    def test_next_action_is_after_today_unless_work_is_due_today(self, expires, offset, card_offset):
        today = expires + timedelta(days=offset)
        card = None if card_offset is None else expires + timedelta(days=card_offset)
        decision = decide(today, card=card, expires=expires)
        if decision.charge is not None:
            assert decision.next_action_on == today
            assert decision.charge == "fail" or today < expires
        elif decision.next_action_on is not None:
            assert decision.next_action_on > today
        if decision.kind is not None:
            assert decision.kind in ("charge-notice", "card-expiring")
            assert today < auto_renew.charge_on(expires) or decision.kind == "charge-notice"

    @hypothesis_settings(max_examples=200, deadline=None)
    @given(expires=st.dates(min_value=date(2026, 1, 1), max_value=date(2032, 12, 31)))
    def test_following_next_action_on_meets_every_due_step(self, expires):
        """Jumping from one next_action_on to the next (as the scan does) reaches the notice and the charge."""
        day = auto_renew.first_auto_renew_action_on(expires, None)
        sent: set = set()
        seen = []
        for _ in range(20):
            decision = decide(day, sent=sent, expires=expires)
            if decision.kind:
                seen.append((decision.kind, day))
                sent.add((decision.stage.name, decision.kind))
            if decision.charge:
                seen.append(("charge", day))
                break
            day = decision.next_action_on
        assert seen == [("charge-notice", expires - timedelta(days=30)), ("charge", expires - timedelta(days=7))]


def test_day_stage_names_a_manual_stage_or_the_offset():
    assert auto_renew.day_stage(DEFAULT_STAGES, EXPIRES, date(2027, 3, 24)).name == "-7d"
    assert auto_renew.day_stage(DEFAULT_STAGES, EXPIRES, date(2027, 3, 26)).name == "-5d"
    assert auto_renew.day_stage(DEFAULT_STAGES, EXPIRES, date(2027, 2, 28)) == Stage(months=-1)


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


def test_two_workers_racing_for_the_same_charges_charge_each_once(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server, sandbox_latency_ms=100)
    try:
        mailboxes = [add_auto_renew(rt, "pm_card_visa", notified=True) for _ in range(20)]
        ids = [m.id for m in mailboxes]
        with rt.session_factory() as session, session.begin():
            for mailbox_id in ids:
                session.get(Mailbox, mailbox_id).next_action_on = CHARGE_DAY
        barrier = threading.Barrier(2)
        results = []

        def worker(order):
            barrier.wait()
            with time_machine.travel(at_morning(CHARGE_DAY), tick=False):
                results.append(
                    charges.run_charges(
                        rt.session_factory,
                        rt.gateway,
                        order,
                        today=CHARGE_DAY,
                        clock=rt.clock,
                        mail_domain=rt.mail_domain,
                        concurrency=4,
                    )
                )

        threads = [threading.Thread(target=worker, args=(o,)) for o in (ids, list(reversed(ids)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(r.charges for r in results) == 20
        assert sum(r.outcomes["succeeded"] for r in results) == 20
        with rt.session_factory() as session:
            assert session.scalar(select(func.count()).select_from(SandboxCharge)) == 20
            assert session.scalar(select(func.count(func.distinct(SandboxCharge.idempotency_key)))) == 20
            assert session.scalar(select(func.count()).select_from(ChargeIntent)) == 20
            assert (
                session.scalar(
                    select(func.count())
                    .select_from(NoticeLedgerEntry)
                    .where(NoticeLedgerEntry.kind == "charge-succeeded")
                )
                == 20
            )
            assert {m.expires_on for m in session.scalars(select(Mailbox))} == {date(2028, 3, 31)}
    finally:
        rt.close()


class CallsInFlight:
    """The runtime's own gateway, counting the charges it is answering at once."""

    def __init__(self, inner):
        self._inner, self._lock, self.now, self.most = inner, threading.Lock(), 0, 0

    def charge(self, **kwargs):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self._inner.charge(**kwargs)
        finally:
            with self._lock:
                self.now -= 1

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_charges_run_concurrently_up_to_the_gateway_concurrency(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(
        tmp_path, database_url, session_factory, smtp_server, sandbox_latency_ms=200, gateway_concurrency=16
    )
    in_flight = CallsInFlight(rt.gateway)
    rt.gateway = in_flight
    try:
        for _ in range(32):
            add_auto_renew(rt, "pm_card_visa", notified=True)
        summary = run_on(rt, CHARGE_DAY)
        assert summary.charges.outcomes["succeeded"] == 32
        # Each answer takes 200 ms: the charges overlap, never more than GATEWAY_CONCURRENCY at once.
        assert 2 <= in_flight.most <= 16, in_flight.most
    finally:
        rt.close()


def test_the_charge_threads_share_a_pool_that_keeps_its_connections(tmp_path, database_url, smtp_server):
    """32 threads on the runtime's own engine open at most its pool's 33 connections, once each.

    SQLAlchemy's default pool (5 kept, 10 overflow) closed each overflow connection as it came
    back: this test opened 35 connections with it."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        sandbox_latency_ms=50,
        gateway_concurrency=32,
    )
    rt = Runtime(settings)  # its own engine and pool, as in a worker
    opened = []
    event.listen(rt.engine, "connect", lambda *_: opened.append(1))
    try:
        for _ in range(96):
            add_auto_renew(rt, "pm_card_visa", notified=True)
        summary = run_on(rt, CHARGE_DAY)
        assert summary.charges.outcomes["succeeded"] == 96
        assert rt.engine.pool.size() == pool_size(settings) == 33
        assert 1 < len(opened) <= 33  # each connection opened once, kept in the pool
    finally:
        rt.close()


def test_no_charge_thread_waits_for_a_connection_when_the_gateway_answers_at_once(tmp_path, database_url, smtp_server):
    """At zero latency each of the 32 threads asks for a connection again as soon as it gives one
    back; on a pool of 15, 17 threads waited the whole run (and failed their charges past the
    pool's 30 s).  The pool covers the threads: it is never all checked out."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        sandbox_latency_ms=0,
        gateway_concurrency=32,
    )
    rt = Runtime(settings)
    most = [0]

    def checked_out(*_) -> None:
        most[0] = max(most[0], rt.engine.pool.checkedout())

    event.listen(rt.engine, "checkout", checked_out)
    try:
        for _ in range(128):
            add_auto_renew(rt, "pm_card_visa", notified=True)
        summary = run_on(rt, CHARGE_DAY)
        assert summary.charges.outcomes["succeeded"] == 128 and summary.charges.errors == 0
        assert POOL_SIZE < most[0] < rt.engine.pool.size()  # more threads than 15 at once, none waiting
    finally:
        rt.close()


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


def test_charge_threads_log_with_the_task_s_context(tmp_path, database_url, session_factory, smtp_server):
    """The charges run in a thread pool; their log lines still carry the task id and business date."""
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        ids = [add_auto_renew(rt, "pm_card_visa", notified=True).id for _ in range(6)]
        with rt.session_factory() as session, session.begin():
            for mailbox_id in ids:
                session.get(Mailbox, mailbox_id).next_action_on = CHARGE_DAY
        stream = io.StringIO()
        handler = configure_logging("json", logging.INFO, stream=stream)
        try:
            with log_context(day=CHARGE_DAY, task="charge-task-1", name="pec_renewal.charge_batch"):
                with time_machine.travel(at_morning(CHARGE_DAY), tick=False):
                    result = charges.run_charges(
                        rt.session_factory,
                        rt.gateway,
                        ids,
                        today=CHARGE_DAY,
                        clock=rt.clock,
                        mail_domain=rt.mail_domain,
                        concurrency=3,
                    )
        finally:
            remove_logging(handler)
    finally:
        rt.close()
    assert result.charges == 6
    charged = [
        record
        for record in map(json.loads, stream.getvalue().splitlines())
        if record["logger"] == "worker.gateways.sandbox" and record["message"].startswith("sandbox: charged")
    ]
    assert len(charged) == 6
    assert {(r["task_id"], r["task"], r["business_date"]) for r in charged} == {
        ("charge-task-1", "pec_renewal.charge_batch", CHARGE_DAY.isoformat())
    }


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
