"""The forecast of ``pec-renewal report`` (the scan's rule, day after day; no database)."""

from datetime import date, timedelta
from types import SimpleNamespace

from worker.rules.schedule import DEFAULT_STAGES, first_action_on
from worker.services import charges
from worker.services.charges import DEFAULT_CHARGE_PLAN, ChargePlan, CycleState
from worker.services.report import forecast_steps

EXPIRES = date(2027, 3, 31)


def mailbox(
    *, auto_renew=False, on_domain=False, card_expires_on=None, payment_method="pm_card_visa", next_action_on=None
):
    return SimpleNamespace(
        id=7,
        expires_on=EXPIRES,
        domain_id=3 if on_domain else None,
        auto_renew=auto_renew,
        payment_method=payment_method if auto_renew else None,
        card_expires_on=card_expires_on,
        next_action_on=next_action_on or first_action_on(DEFAULT_STAGES, EXPIRES),
        reminders_opt_out_for=None,
    )


def steps(first_day, last_day, *, plan=DEFAULT_CHARGE_PLAN, sent=(), state=None, **facts):
    box = mailbox(**facts)
    auto_renew_states = {}
    if box.auto_renew and not facts.get("on_domain"):
        auto_renew_states[box.id] = state or CycleState(frozenset(), None, [])
    found = forecast_steps(
        box,
        auto_renew_states,
        {(box.id, EXPIRES): set(sent)},
        stages=DEFAULT_STAGES,
        plan=plan,
        first_day=first_day,
        last_day=last_day,
    )
    return [(step.day, step.step if step.step == "charge" else f"{step.step} {step.stage}") for step in found]


def test_a_manual_mailbox_has_each_stage_in_the_window():
    assert steps(date(2027, 3, 16), date(2027, 4, 2), next_action_on=date(2027, 3, 16)) == [
        (date(2027, 3, 16), "expiry-notice -15d"),
        (date(2027, 3, 24), "expiry-notice -7d"),
        (date(2027, 3, 30), "expiry-notice -1d"),
        (date(2027, 3, 31), "expiry-notice 0d"),
        (date(2027, 4, 1), "expired-notice +1d"),
    ]


def test_a_stage_already_in_the_ledger_is_not_forecast_again():
    assert steps(date(2027, 3, 24), date(2027, 3, 25), next_action_on=date(2027, 3, 24), sent={"-7d"}) == []


def test_an_overdue_mailbox_gets_only_its_most_urgent_stage():
    # Not looked at since the -1m stage: on the -15d day only -15d goes out.
    assert steps(date(2027, 3, 20), date(2027, 3, 23), next_action_on=date(2027, 2, 28)) == [
        (date(2027, 3, 20), "expiry-notice -15d")
    ]


def test_a_domain_mailbox_gets_domain_notices():
    assert steps(date(2027, 3, 30), date(2027, 4, 1), on_domain=True, next_action_on=date(2027, 3, 30)) == [
        (date(2027, 3, 30), "domain-expiry-notice -1d"),
        (date(2027, 3, 31), "domain-expiry-notice 0d"),
        (date(2027, 4, 1), "domain-expiry-notice +1d"),
    ]


def test_an_auto_renew_mailbox_has_its_notice_and_its_charge():
    told = CycleState(frozenset(), None, [])
    assert steps(date(2027, 3, 1), date(2027, 3, 31), auto_renew=True, state=told) == [
        (date(2027, 3, 1), "charge-notice -30d"),
        (date(2027, 3, 24), "charge"),
    ]
    plan = ChargePlan(notice_days=20, charge_days=(10, 2))
    assert steps(date(2027, 3, 1), date(2027, 3, 31), auto_renew=True, plan=plan) == [
        (date(2027, 3, 11), "charge-notice -20d"),
        (date(2027, 3, 21), "charge"),
    ]


def test_card_expiring_only_for_a_card_that_expires_before_the_charge():
    window = (date(2026, 12, 31), date(2027, 3, 2))
    assert steps(*window, auto_renew=True, card_expires_on=date(2029, 6, 30)) == [
        (date(2027, 3, 1), "charge-notice -30d")
    ]
    assert steps(*window, auto_renew=True, card_expires_on=date(2027, 2, 28)) == [
        (date(2026, 12, 31), "card-expiring -3m"),
        (date(2027, 3, 1), "charge-notice -30d"),
    ]


def test_a_cycle_first_seen_after_its_charge_days_gets_charge_failed_then_the_manual_stages():
    first = date(2027, 4, 1)
    forecast = steps(first, date(2027, 5, 10), auto_renew=True, next_action_on=first)
    assert forecast == [(first, "charge"), (date(2027, 4, 30), "expired-notice +30d")]
    box = mailbox(auto_renew=True, next_action_on=first)
    [failed, _] = forecast_steps(
        box,
        {box.id: CycleState(frozenset(), None, [])},
        {},
        stages=DEFAULT_STAGES,
        plan=DEFAULT_CHARGE_PLAN,
        first_day=first,
        last_day=date(2027, 5, 10),
    )
    assert failed.action == charges.FAIL


def test_the_forecast_leaves_the_states_it_was_given_alone():
    box = mailbox(next_action_on=date(2027, 3, 16))
    sent = {(box.id, EXPIRES): {"-3m"}}
    forecast_steps(
        box,
        {},
        sent,
        stages=DEFAULT_STAGES,
        plan=DEFAULT_CHARGE_PLAN,
        first_day=date(2027, 3, 16),
        last_day=date(2027, 3, 16) + timedelta(days=30),
    )
    assert sent == {(box.id, EXPIRES): {"-3m"}}
    assert box.next_action_on == date(2027, 3, 16)


def test_nothing_once_deleted():
    assert steps(date(2027, 6, 30), date(2027, 7, 10), next_action_on=date(2027, 6, 30)) == []
