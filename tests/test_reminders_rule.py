"""The holder's opt-out of the expiry reminders: the pure rule, the signed link and its redaction (no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
import time_machine
from itsdangerous import URLSafeTimedSerializer

from tests.support.tokens import tampered
from worker.rules.auto_renew import decide_auto_renew
from worker.rules.links import RENEWAL_SALT, LinkSigner, TokenExpired, TokenInvalid, redact
from worker.rules.notices import (
    OPTED_OUT,
    REMINDER_KINDS,
    decide_notice,
    reminders_opted_out,
    without_opted_out_reminder,
)
from worker.rules.schedule import DEFAULT_STAGES, first_action_on
from worker.services.charges import DEFAULT_CHARGE_PLAN
from worker.services.report import forecast_steps

EXPIRES = date(2027, 3, 31)
KEYS = ("k" * 32, "n" * 32)
BASE_URL = "https://rinnovi.example.it"
MESSAGE_ID = "0123456789abcdef0123456789abcdef@pec-provider.example.it"


def decide(today: date, opt_out_for: date | None, **overrides):
    arguments = dict(
        stages=DEFAULT_STAGES,
        expires_on=EXPIRES,
        on_domain=False,
        auto_renew=False,
        pending_since=today,
        today=today,
        already_sent=frozenset(),
    )
    arguments.update(overrides)
    return without_opted_out_reminder(decide_notice(**arguments), opt_out_for=opt_out_for, expires_on=EXPIRES)


class TestTheRule:
    def test_the_reminders_are_the_three_notice_kinds(self):
        assert REMINDER_KINDS == {"expiry-notice", "expired-notice", "domain-expiry-notice"}

    def test_an_opt_out_applies_to_its_own_cycle_only(self):
        assert reminders_opted_out(EXPIRES, EXPIRES)
        assert not reminders_opted_out(None, EXPIRES)
        assert not reminders_opted_out(EXPIRES, date(2028, 3, 31))  # renewed: the next cycle has its reminders

    @pytest.mark.parametrize(
        ("today", "on_domain"),
        [(date(2027, 3, 24), False), (date(2027, 4, 30), False), (date(2027, 3, 24), True), (date(2027, 4, 1), True)],
    )
    def test_every_reminder_of_an_opted_out_cycle_is_a_skip_and_the_schedule_goes_on(self, today, on_domain):
        sent = decide(today, None, on_domain=on_domain)
        skipped = decide(today, EXPIRES, on_domain=on_domain)
        assert sent.kind in REMINDER_KINDS and sent.stage is not None
        assert (skipped.kind, skipped.stage, skipped.skip_reason) == (None, None, OPTED_OUT)
        assert skipped.next_action_on == sent.next_action_on  # looked at again on the next stage
        assert skipped.superseded == ()

    def test_an_opt_out_of_an_earlier_cycle_changes_nothing(self):
        assert decide(date(2027, 3, 24), date(2026, 3, 31)) == decide(date(2027, 3, 24), None)

    def test_a_day_with_nothing_due_keeps_its_own_reason(self):
        assert decide(date(2026, 12, 1), EXPIRES).skip_reason == "not-due"
        assert decide(date(2027, 7, 1), EXPIRES).skip_reason == "deleted"

    def test_charge_emails_are_not_reminders(self):
        notice_day = EXPIRES - timedelta(days=DEFAULT_CHARGE_PLAN.notice_days)
        decision = decide_auto_renew(
            stages=DEFAULT_STAGES,
            expires_on=EXPIRES,
            today=notice_day,
            card_expires_on=None,
            has_payment_method=True,
            sent=frozenset(),
            failed_on=None,
            attempts=(),
        )
        assert decision.kind == "charge-notice"
        assert without_opted_out_reminder(decision, opt_out_for=EXPIRES, expires_on=EXPIRES) == decision

    def test_after_a_failed_charge_the_manual_reminders_are_left_out_too(self):
        failed_on = date(2027, 3, 24)
        decision = decide_auto_renew(
            stages=DEFAULT_STAGES,
            expires_on=EXPIRES,
            today=date(2027, 3, 30),
            card_expires_on=None,
            has_payment_method=True,
            sent=frozenset({("-7d", "charge-failed")}),
            failed_on=failed_on,
            attempts=(),
            pending_since=date(2027, 3, 30),
        )
        assert (decision.kind, decision.stage.name) == ("expiry-notice", "-1d")
        skipped = without_opted_out_reminder(decision, opt_out_for=EXPIRES, expires_on=EXPIRES)
        assert (skipped.kind, skipped.skip_reason, skipped.next_action_on) == (
            None,
            OPTED_OUT,
            decision.next_action_on,
        )


def test_the_report_forecasts_no_reminder_for_an_opted_out_cycle():
    def forecast(opt_out_for):
        box = SimpleNamespace(
            id=7,
            expires_on=EXPIRES,
            domain_id=None,
            auto_renew=False,
            payment_method=None,
            card_expires_on=None,
            next_action_on=first_action_on(DEFAULT_STAGES, EXPIRES),
            reminders_opt_out_for=opt_out_for,
        )
        return forecast_steps(
            box, {}, {(box.id, EXPIRES): set()}, stages=DEFAULT_STAGES, plan=DEFAULT_CHARGE_PLAN,
            first_day=date(2026, 12, 1), last_day=date(2027, 7, 15),
        )  # fmt: skip

    assert len(forecast(None)) == 11
    assert forecast(EXPIRES) == []


class TestTheLink:
    def signer(self, keys=KEYS, max_age_days=200):
        return LinkSigner(keys, BASE_URL, max_age_days=max_age_days)

    def test_the_link_names_the_email_and_reads_back(self):
        url = self.signer().reminders_url(MESSAGE_ID)
        assert url.startswith(f"{BASE_URL}/avvisi/")
        token = url.rsplit("/", 1)[1]
        assert self.signer().read_reminders_token(token) == MESSAGE_ID
        # Short whatever the email's mailboxes: one header line.
        assert len(f"List-Unsubscribe: <{url}>") < 300

    def test_an_older_key_still_verifies(self):
        token = self.signer(keys=KEYS[:1]).reminders_url(MESSAGE_ID).rsplit("/", 1)[1]
        assert self.signer().read_reminders_token(token) == MESSAGE_ID

    def test_a_renewal_token_is_not_a_reminders_token_nor_the_other_way(self):
        signer = self.signer()
        renewal = signer.renewal_token("m", 7, EXPIRES)
        reminders = signer.reminders_url(MESSAGE_ID).rsplit("/", 1)[1]
        with pytest.raises(TokenInvalid):
            signer.read_reminders_token(renewal)
        with pytest.raises(TokenInvalid):
            signer.read_renewal_token(reminders)
        same_payload_renewal_salt = URLSafeTimedSerializer(list(KEYS), salt=RENEWAL_SALT).dumps(MESSAGE_ID)
        with pytest.raises(TokenInvalid):
            signer.read_reminders_token(same_payload_renewal_salt)

    @pytest.mark.parametrize("token", ["", "abc", "a" * 2000, "é.é.é", "../rinnova", "x.y.z"])
    def test_malformed_tokens_are_invalid(self, token):
        with pytest.raises(TokenInvalid):
            self.signer().read_reminders_token(token)

    def test_a_tampered_token_is_invalid(self):
        token = self.signer().reminders_url(MESSAGE_ID).rsplit("/", 1)[1]
        with pytest.raises(TokenInvalid):
            self.signer().read_reminders_token(tampered(token))

    def test_a_payload_that_is_not_a_message_id_is_invalid(self):
        forged = URLSafeTimedSerializer(list(KEYS), salt="pec-renewal.reminders-link").dumps(["m", 7])
        with pytest.raises(TokenInvalid):
            self.signer().read_reminders_token(forged)
        with pytest.raises(ValueError):
            self.signer().reminders_url("not a message id\r\nBcc: x@example.it")

    def test_an_old_link_expires(self):
        with time_machine.travel(datetime(2027, 1, 1, tzinfo=UTC), tick=False):
            token = self.signer().reminders_url(MESSAGE_ID).rsplit("/", 1)[1]
        with time_machine.travel(datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=201), tick=False):
            with pytest.raises(TokenExpired):
                self.signer().read_reminders_token(token)

    def test_the_token_is_redacted_from_log_lines(self):
        url = self.signer().reminders_url(MESSAGE_ID)
        token = url.rsplit("/", 1)[1]
        line = f'127.0.0.1 - - "POST /avvisi/{token} HTTP/1.1" 200 -'
        assert redact(line) == '127.0.0.1 - - "POST /avvisi/[redacted] HTTP/1.1" 200 -'
        assert token not in redact(f"List-Unsubscribe: <{url}>")
