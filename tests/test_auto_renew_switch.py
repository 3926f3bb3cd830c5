"""The holder's auto-renew switch, on PostgreSQL: what it changes, and the day by day that follows."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import time_machine
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from tests.support.charges import (
    CHARGE_DAY,
    EXPIRES,
    add_auto_renew,
    at_morning,
    gateway_record,
    received,
    text_of,
    walk,
)
from worker.rules import schedule
from worker.rules.auto_renew import AttemptRecord, can_switch_on, manual_action_on, next_charge_on
from worker.services import auto_renew_switch as switch
from worker.services.auto_renew_switch import Outcome, PageState
from worker.store.models import ChargeIntent, Mailbox

STAGES = schedule.DEFAULT_STAGES


def _page(runtime, mailbox_id: int, today: date) -> switch.AutoRenewPage:
    with runtime.session_factory() as session:
        return switch.read_auto_renew(session, mailbox_id, today, runtime.charge_plan)


def _off(runtime, mailbox_id: int, today: date, seen: date | None = EXPIRES) -> switch.SwitchResult:
    return switch.switch_off(
        runtime.session_factory, mailbox_id, seen_expires_on=seen, today=today, stages=runtime.settings.notice_stages
    )


def _mailbox(runtime, mailbox_id: int) -> Mailbox:
    with runtime.session_factory() as session:
        return session.get_one(Mailbox, mailbox_id, options=[selectinload(Mailbox.schedule)])


# -- The pure rule --------------------------------------------------------------------------------


def test_next_charge_date_follows_the_attempts():
    assert next_charge_on(EXPIRES, (), EXPIRES - timedelta(days=20)) == CHARGE_DAY
    assert next_charge_on(EXPIRES, (), CHARGE_DAY) == CHARGE_DAY  # the day has come, not charged yet
    soft = AttemptRecord(1, "soft_decline", CHARGE_DAY)
    assert next_charge_on(EXPIRES, (soft,), CHARGE_DAY) == EXPIRES - timedelta(days=5)
    assert next_charge_on(EXPIRES, (AttemptRecord(1, "hard_decline", CHARGE_DAY),), CHARGE_DAY) is None
    assert next_charge_on(EXPIRES, (AttemptRecord(4, "soft_decline", CHARGE_DAY),), CHARGE_DAY) is None


def test_switching_on_only_before_the_first_charge_date():
    assert can_switch_on(EXPIRES, CHARGE_DAY - timedelta(days=1))
    assert not can_switch_on(EXPIRES, CHARGE_DAY)


def test_the_manual_schedule_takes_over_from_today_or_the_next_stage():
    # 20 days before expiry: the -1m stage has passed, -15d is next.
    assert manual_action_on(STAGES, EXPIRES, EXPIRES - timedelta(days=20)) == EXPIRES - timedelta(days=15)
    # On the charge day, a manual stage (-7d) falls today: today.
    assert manual_action_on(STAGES, EXPIRES, CHARGE_DAY) == CHARGE_DAY


# -- The service ----------------------------------------------------------------------------------


def test_the_page_shows_state_next_charge_and_masked_method(runtime):
    mailbox = add_auto_renew(runtime, "pm_card_visa", notified=True)
    view = _page(runtime, mailbox.id, EXPIRES - timedelta(days=20))
    assert view.state is PageState.ON
    assert view.next_charge_on == CHARGE_DAY
    assert view.amount_cents > 0
    assert view.method == "Visa •••• 4242"
    assert "pm_card_visa" not in repr(view)


def test_switched_off_before_the_charge_no_charge_and_the_manual_notices_follow(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa", reference_email="luca@example.it")
    today = EXPIRES - timedelta(days=20)
    assert walk(runtime, smtp_server, EXPIRES - timedelta(days=31), today - timedelta(days=1)) == [
        (EXPIRES - timedelta(days=30), "charge-notice", "-30d")
    ]
    assert _off(runtime, mailbox.id, today).outcome is Outcome.SWITCHED_OFF
    stored = _mailbox(runtime, mailbox.id)
    assert stored.auto_renew is False
    assert stored.payment_method == "pm_card_visa"  # kept: the holder may switch back on next cycle
    assert stored.next_action_on == EXPIRES - timedelta(days=15)
    assert _page(runtime, mailbox.id, today).state is PageState.OFF

    sent = walk(runtime, smtp_server, today, EXPIRES + timedelta(days=1))
    assert sent == [
        (EXPIRES - timedelta(days=15), "expiry-notice", "-15d"),
        (CHARGE_DAY, "expiry-notice", "-7d"),
        (EXPIRES - timedelta(days=1), "expiry-notice", "-1d"),
        (EXPIRES, "expiry-notice", "0d"),
        (EXPIRES + timedelta(days=1), "expired-notice", "+1d"),
    ]
    assert gateway_record(runtime) == []
    assert "/rinnova/" in text_of(received(smtp_server)[1])
    with runtime.session_factory() as session:
        assert session.scalars(select(ChargeIntent)).all() == []


def test_switched_off_on_the_charge_day_before_the_charge(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa", notified=True)
    walk(runtime, smtp_server, CHARGE_DAY - timedelta(days=1), CHARGE_DAY - timedelta(days=1))
    assert _off(runtime, mailbox.id, CHARGE_DAY).outcome is Outcome.SWITCHED_OFF
    sent = walk(runtime, smtp_server, CHARGE_DAY, CHARGE_DAY)
    assert sent == [(CHARGE_DAY, "expiry-notice", "-7d")]
    assert gateway_record(runtime) == []


def test_a_charge_in_flight_wins_and_the_switch_changes_nothing(runtime):
    mailbox = add_auto_renew(runtime, "pm_card_visa", notified=True)
    with runtime.session_factory() as session, session.begin():
        session.add(
            ChargeIntent(
                mailbox_id=mailbox.id,
                cycle_expires_on=EXPIRES,
                attempt=1,
                idempotency_key=f"renewal:{mailbox.id}:{EXPIRES}:1",
                amount_cents=1000,
                currency="EUR",
                payment_method="pm_card_visa",
                years=1,
                status="started",
                business_date=CHARGE_DAY,
                created_at=datetime(2027, 3, 24, 6, tzinfo=UTC),
            )
        )
    before = _mailbox(runtime, mailbox.id)
    assert _page(runtime, mailbox.id, CHARGE_DAY).state is PageState.CHARGING
    assert _off(runtime, mailbox.id, CHARGE_DAY).outcome is Outcome.CHARGE_RUNNING
    after = _mailbox(runtime, mailbox.id)
    assert (after.auto_renew, after.next_action_on) == (True, before.next_action_on)


def test_a_charge_that_renewed_since_the_page_was_read_wins(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa", notified=True)
    walk(runtime, smtp_server, CHARGE_DAY, CHARGE_DAY)  # charged: the expiry moves on a year
    result = _off(runtime, mailbox.id, CHARGE_DAY, seen=EXPIRES)
    assert result.outcome is Outcome.RENEWED
    assert result.expires_on == date(2028, 3, 31)
    assert _mailbox(runtime, mailbox.id).auto_renew is True
    assert len(gateway_record(runtime)) == 1


def test_switched_back_on_the_charge_follows(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_visa", notified=True)
    today = EXPIRES - timedelta(days=20)
    walk(runtime, smtp_server, today - timedelta(days=1), today - timedelta(days=1))
    _off(runtime, mailbox.id, today)
    assert _page(runtime, mailbox.id, today).can_switch_on
    result = switch.switch_on(runtime.session_factory, mailbox.id, today=today, plan=runtime.charge_plan)
    assert result.outcome is Outcome.SWITCHED_ON
    assert _mailbox(runtime, mailbox.id).auto_renew is True
    sent = walk(runtime, smtp_server, today, CHARGE_DAY)
    assert sent == [(CHARGE_DAY, "charge-succeeded", "-7d")]  # the charge notice went out before the switch
    assert [r["outcome"] for r in gateway_record(runtime)] == ["succeeded"]


def test_switching_on_needs_a_method_and_time_before_the_charge(runtime):
    without = add_auto_renew(runtime, None, notified=True)
    today = EXPIRES - timedelta(days=20)
    _off(runtime, without.id, today)
    assert switch.switch_on(runtime.session_factory, without.id, today=today).outcome is Outcome.NO_METHOD
    late = add_auto_renew(runtime, "pm_card_visa", notified=True)
    _off(runtime, late.id, today)
    assert switch.switch_on(runtime.session_factory, late.id, today=CHARGE_DAY).outcome is Outcome.TOO_LATE
    assert _mailbox(runtime, late.id).auto_renew is False


def test_a_new_method_from_the_hosted_page_is_charged_next(runtime, smtp_server):
    mailbox = add_auto_renew(runtime, "pm_card_chargeDeclined", notified=True, card_expires_on=date(2027, 2, 28))
    today = EXPIRES - timedelta(days=20)
    saved = runtime.gateway.save_method("pm_card_visa")
    assert saved.token.startswith("pm_sbx_") and saved.card_expires_on is not None  # a stored method
    assert switch.replace_method(runtime.session_factory, mailbox.id, saved, today=today).outcome is (
        Outcome.METHOD_SAVED
    )
    assert runtime.gateway.save_method("pm_not_a_sandbox_token") is None
    assert switch.replace_method(runtime.session_factory, mailbox.id, None, today=today).outcome is (
        Outcome.METHOD_REFUSED
    )
    stored = _mailbox(runtime, mailbox.id)
    assert (stored.payment_method, stored.card_expires_on) == (saved.token, saved.card_expires_on)
    walk(runtime, smtp_server, CHARGE_DAY, CHARGE_DAY)
    assert [(r["payment_method"], r["outcome"]) for r in gateway_record(runtime)] == [(saved.token, "succeeded")]


def test_a_mailbox_on_a_domain_has_nothing_to_switch(runtime):
    mailbox = add_auto_renew(runtime, None, domain="studio.example.it")
    assert _page(runtime, mailbox.id, EXPIRES - timedelta(days=20)).state is PageState.ON_DOMAIN
    assert _off(runtime, mailbox.id, EXPIRES - timedelta(days=20)).outcome is Outcome.NOT_ALLOWED
    assert _page(runtime, 10**9, EXPIRES).state is PageState.NOT_FOUND


def test_every_auto_renew_email_carries_the_mailbox_s_auto_renew_page(runtime, smtp_server):
    paid = add_auto_renew(runtime, "pm_card_visa", card_expires_on=date(2027, 2, 28), reference_email="a@example.it")
    declined = add_auto_renew(runtime, "pm_card_chargeDeclined", reference_email="b@example.it")
    walk(runtime, smtp_server, EXPIRES - timedelta(days=93), CHARGE_DAY)
    kinds = set()
    for message in received(smtp_server):
        mailbox_id = paid.id if message["To"] == "a@example.it" else declined.id
        for body in (text_of(message), message.get_body(("html",)).get_content()):
            tokens = re.findall(r"https://rinnovi\.example\.test/rinnovo-automatico/([A-Za-z0-9_\-.]+)", body)
            assert tokens, message["X-PEC-Renewal-Kind"]
            with time_machine.travel(at_morning(CHARGE_DAY), tick=False):  # when the emails were signed
                assert {runtime.signer.read_auto_renew_token(token) for token in tokens} == {mailbox_id}
        kinds.add(message["X-PEC-Renewal-Kind"])
    assert kinds == {"card-expiring", "charge-notice", "charge-succeeded", "charge-failed"}
