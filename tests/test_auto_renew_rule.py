"""The auto-renew rule on its own, without a database: what each day of a cycle asks for, and the day's stage."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support.charges import CHARGE_DAY, EXPIRES
from worker.rules import auto_renew
from worker.rules.auto_renew import AttemptRecord, decide_auto_renew
from worker.rules.schedule import DEFAULT_STAGES, Stage


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
