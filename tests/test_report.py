"""The forecast of ``pec-renewal report`` (pure rules, no database)."""

from datetime import date

from worker.charges import DEFAULT_CHARGE_PLAN, ChargePlan
from worker.report import steps_in_window
from worker.schedule import DEFAULT_STAGES

EXPIRES = date(2027, 3, 31)


def steps(first_day, last_day, *, auto_renew=False, on_domain=False, plan=DEFAULT_CHARGE_PLAN):
    return steps_in_window(
        stages=DEFAULT_STAGES, plan=plan, expires_on=EXPIRES, on_domain=on_domain, auto_renew=auto_renew,
        first_day=first_day, last_day=last_day,
    )  # fmt: skip


def test_a_manual_mailbox_has_each_stage_in_the_window():
    assert steps(date(2027, 3, 16), date(2027, 4, 2)) == [
        (date(2027, 3, 16), "expiry-notice"),
        (date(2027, 3, 24), "expiry-notice"),
        (date(2027, 3, 30), "expiry-notice"),
        (date(2027, 3, 31), "expiry-notice"),
        (date(2027, 4, 1), "expired-notice"),
    ]


def test_a_domain_mailbox_gets_domain_notices():
    assert steps(date(2027, 3, 30), date(2027, 4, 1), on_domain=True) == [
        (date(2027, 3, 30), "domain-expiry-notice"),
        (date(2027, 3, 31), "domain-expiry-notice"),
        (date(2027, 4, 1), "domain-expiry-notice"),
    ]


def test_an_auto_renew_mailbox_has_its_notice_and_its_charge():
    assert steps(date(2027, 3, 1), date(2027, 3, 31), auto_renew=True) == [
        (date(2027, 3, 1), "charge-notice"),
        (date(2027, 3, 24), "charge"),
    ]
    plan = ChargePlan(notice_days=20, charge_days=(10, 2))
    assert steps(date(2027, 3, 11), date(2027, 3, 31), auto_renew=True, plan=plan) == [
        (date(2027, 3, 11), "charge-notice"),
        (date(2027, 3, 21), "charge"),
    ]


def test_nothing_once_deleted():
    assert steps(date(2027, 6, 30), date(2027, 7, 10)) == []
