"""The auto-renew rule: what is due on a day for one auto-renew mailbox.  Pure: no I/O, no clock.

The schedule of one expiry cycle of an auto-renew mailbox:

- ``charge-notice`` 30 days before expiry (stage ``-30d``), sent late if the
  job missed the day, as long as the charge has not come;
- ``card-expiring`` once per cycle, from the start of the notice window (three
  months before expiry), when the stored card expires before the charge date;
- the charge 7 days before expiry, then retries after a soft decline or a
  gateway outage 5, 3 and 1 day before expiry (a :class:`ChargePlan`, from the settings).
  A job that missed a charge day charges on its next run, if that is before
  expiry; missed retry slots are passed over, not made up in a burst;
- a charge the issuer wants the holder to authenticate (3-D Secure, PayPal's payer action) is
  not a decline: the holder gets ``charge-authentication-required`` with a link to authenticate
  that very payment on session, and no other attempt charges the cycle; authenticated, the cycle
  is renewed as by a successful charge; not authenticated by the last charge day (and at least
  a day after the email), or by the expiry, the cycle fails as below;
- after a hard decline, an authentication never given or the last retry:
  ``charge-failed`` once, with an unpaid renewal order, recorded in the ledger
  under the stage name of that day (a manual stage's name when one falls that
  day, so it is not sent again); from then on the cycle follows the manual
  schedule (:func:`worker.rules.notices.decide_notice`) from its next stage.

One email per mailbox per day: when two are due the same day, the charge
notice goes first and the card notice the day after.

Each charge attempt has a deterministic idempotency key,
``renewal:{mailbox}:{cycle}:{attempt}`` (:func:`idempotency_key`): the gateway
charges a key at most once.  The charge service (:mod:`worker.services.charges`)
carries out what :func:`decide_auto_renew` decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from worker.rules import schedule
from worker.rules.notices import decide_notice
from worker.rules.schedule import Stage

CHARGE_NOTICE = "charge-notice"
CARD_EXPIRING = "card-expiring"
CHARGE_SUCCEEDED = "charge-succeeded"
CHARGE_FAILED = "charge-failed"
#: The charge was not made because the holder's own order for the cycle awaits payment.
CHARGE_SKIPPED = "charge-skipped"
#: The charge waits for the holder's authentication on session (3-D Secure, PayPal's payer action).
CHARGE_AUTHENTICATION_REQUIRED = "charge-authentication-required"
AUTO_RENEW_KINDS = (
    CHARGE_NOTICE,
    CARD_EXPIRING,
    CHARGE_SUCCEEDED,
    CHARGE_FAILED,
    CHARGE_SKIPPED,
    CHARGE_AUTHENTICATION_REQUIRED,
)

CURRENCY = "EUR"


class ChargeStatus(StrEnum):
    """The status of a charge attempt (``charge_intents.status``)."""

    STARTED = "started"  # the intent is committed; the gateway may or may not have been called
    SUCCEEDED = "succeeded"
    SOFT_DECLINE = "soft_decline"
    HARD_DECLINE = "hard_decline"
    REQUIRES_AUTHENTICATION = "requires_authentication"
    UNKNOWN = "unknown"  # the gateway's answer was lost: reconcile with ``lookup`` before anything else


UNRESOLVED = (ChargeStatus.STARTED.value, ChargeStatus.UNKNOWN.value)
FINAL_FAILURES = (ChargeStatus.HARD_DECLINE.value,)
#: An attempt that waits for the holder: no other attempt of the cycle is made meanwhile.
AWAITING_AUTHENTICATION = ChargeStatus.REQUIRES_AUTHENTICATION.value
#: Recorded as the decline code when ``lookup`` found no charge and it was too late to make one.
NOT_CHARGED = "not_charged"
NO_PAYMENT_METHOD = "no_payment_method"

# Charge actions, for the charge service (the scan only lists them).
CHARGE = "charge"
RECONCILE = "reconcile"
FAIL = "fail"


@dataclass(frozen=True)
class ChargePlan:
    """When the auto-renew steps fall, in days before expiry (``PEC_RENEWAL_CHARGE_NOTICE_DAYS``,
    ``PEC_RENEWAL_CHARGE_DAYS``): the charge notice, then the charge and its retries; and how much a
    public administration is charged (``PEC_RENEWAL_SPLIT_PAYMENT_FOR_PA``)."""

    notice_days: int = 30
    charge_days: tuple[int, ...] = (7, 5, 3, 1)
    #: ``PEC_RENEWAL_CHARGE_RECONCILE_AFTER_MINUTES``: how long a ``started`` intent is a charge in
    #: flight; after that its answer is taken for lost and the charge is looked up.
    reconcile_after_minutes: int = 5
    #: ``PEC_RENEWAL_SPLIT_PAYMENT_FOR_PA``: a public administration's charge is the taxable amount,
    #: the VAT being left to it (split payment, art. 17-ter DPR 633/1972), as its orders are.
    split_payment_for_pa: bool = True

    @property
    def notice_stage(self) -> Stage:
        return Stage(days=-self.notice_days)

    def in_flight(self, intent_created_at: datetime, now: datetime) -> bool:
        """Whether a ``started`` intent written at ``intent_created_at`` may still be awaiting its answer."""
        return now - intent_created_at < timedelta(minutes=self.reconcile_after_minutes)


DEFAULT_CHARGE_PLAN = ChargePlan()
#: The defaults, by their old names.
CHARGE_NOTICE_DAYS_BEFORE_EXPIRY = DEFAULT_CHARGE_PLAN.notice_days
CHARGE_NOTICE_STAGE = DEFAULT_CHARGE_PLAN.notice_stage
CHARGE_DAYS_BEFORE_EXPIRY = DEFAULT_CHARGE_PLAN.charge_days


@dataclass(frozen=True)
class AttemptRecord:
    """One charge attempt of a cycle, as the rule reads it; ``intent_id`` names its intent row."""

    attempt: int
    status: str
    business_date: date
    intent_id: int | None = None


@dataclass(frozen=True)
class AutoRenewDecision:
    """What is due today for one auto-renew mailbox.

    ``kind``/``stage``: an email the scan writes today.  ``charge``: work for the
    charge service (``charge`` attempt number ``attempt``, ``reconcile`` the last
    attempt, or ``fail``: send charge-failed and open the unpaid order).
    """

    kind: str | None = None
    stage: Stage | None = None
    charge: str | None = None
    attempt: int | None = None
    skip_reason: str | None = None
    next_action_on: date | None = None
    superseded: tuple[Stage, ...] = ()


def idempotency_key(mailbox_id: int, cycle_expires_on: date, attempt: int) -> str:
    """The gateway's idempotency key of one charge attempt: the same attempt always has the same key."""
    return f"renewal:{mailbox_id}:{cycle_expires_on.isoformat()}:{attempt}"


def charge_description(mailbox_id: int, cycle_expires_on: date) -> str:
    """What the gateway shows for a charge."""
    return f"PEC renewal, mailbox {mailbox_id}, expiry {cycle_expires_on.isoformat()}"


def charge_dates(expires_on: date, plan: ChargePlan = DEFAULT_CHARGE_PLAN) -> list[date]:
    return [expires_on - timedelta(days=days) for days in plan.charge_days]


def charge_on(expires_on: date, plan: ChargePlan = DEFAULT_CHARGE_PLAN) -> date:
    """The date of the (first) charge of the cycle."""
    return charge_dates(expires_on, plan)[0]


def day_stage(stages: tuple[Stage, ...], expires_on: date, today: date) -> Stage:
    """The stage that names ``today`` in a cycle: a manual stage falling today, else ``±Nd``."""
    for stage in stages:
        if stage.on(expires_on) == today:
            return stage
    return Stage(days=(today - expires_on).days)


def card_expires_too_soon(
    card_expires_on: date | None, expires_on: date, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> bool:
    return card_expires_on is not None and card_expires_on < charge_on(expires_on, plan)


def first_auto_renew_action_on(
    expires_on: date, card_expires_on: date | None, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> date:
    """Where a new auto-renew cycle starts: the card notice window, else the charge notice."""
    if card_expires_too_soon(card_expires_on, expires_on, plan):
        return schedule.add_months(expires_on, -schedule.NOTICE_WINDOW_MONTHS)
    return plan.notice_stage.on(expires_on)


def decide_auto_renew(
    *,
    stages: tuple[Stage, ...],
    expires_on: date,
    today: date,
    card_expires_on: date | None,
    has_payment_method: bool,
    sent: frozenset[tuple[str, str]],
    failed_on: date | None,
    attempts: tuple[AttemptRecord, ...],
    pending_since: date | None = None,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> AutoRenewDecision:
    """The pure rule for one auto-renew mailbox on ``today``.

    ``sent``: the (stage, kind) pairs in the ledger for this cycle;
    ``failed_on``: the business date of this cycle's charge-failed email, if
    any; ``attempts``: this cycle's charge intents, by attempt number;
    ``pending_since``: the mailbox's ``next_action_on`` before this run.
    """
    if schedule.mailbox_state(expires_on, today) is schedule.MailboxState.DELETED:
        return AutoRenewDecision(skip_reason="deleted")
    if failed_on is not None:
        return _after_charge_failed(stages, expires_on, today, sent, failed_on, pending_since)
    last = attempts[-1] if attempts else None
    dates = charge_dates(expires_on, plan)
    if last is not None:
        settled = _after_last_attempt(last, today, dates[-1], expires_on)
        if settled is not None:
            return settled
    if min(dates) <= today or today >= expires_on:
        return _in_the_charge_window(dates, expires_on, today, has_payment_method, sent, last, plan)
    return _before_the_charge(stages, expires_on, today, card_expires_on, sent, plan)


def _after_charge_failed(
    stages: tuple[Stage, ...],
    expires_on: date,
    today: date,
    sent: frozenset[tuple[str, str]],
    failed_on: date,
    pending_since: date | None,
) -> AutoRenewDecision:
    """After charge-failed: the manual schedule, from the stage after that day."""
    later = tuple(stage for stage in stages if stage.on(expires_on) > failed_on)
    day_after = failed_on + timedelta(days=1)
    manual = decide_notice(
        stages=later,
        expires_on=expires_on,
        on_domain=False,
        auto_renew=False,
        pending_since=max(pending_since, day_after) if pending_since else day_after,
        today=today,
        already_sent=frozenset(stage for stage, _kind in sent),
    )
    return AutoRenewDecision(
        kind=manual.kind,
        stage=manual.stage,
        skip_reason=manual.skip_reason,
        next_action_on=manual.next_action_on,
        superseded=manual.superseded,
    )


def _after_last_attempt(
    last: AttemptRecord, today: date, last_charge_day: date, expires_on: date
) -> AutoRenewDecision | None:
    """What the cycle's last charge attempt settles by itself, or None (a soft decline: see the slots)."""
    if last.status in UNRESOLVED:
        return AutoRenewDecision(charge=RECONCILE, attempt=last.attempt, next_action_on=today)
    if last.status == ChargeStatus.SUCCEEDED.value:
        # The expiry moves in the transaction that records the success; a cycle with a success is over.
        return AutoRenewDecision(skip_reason="renewed")
    if last.status in FINAL_FAILURES:
        return AutoRenewDecision(charge=FAIL, next_action_on=today)
    if last.status == AWAITING_AUTHENTICATION:
        return awaiting_authentication(last, today, last_charge_day, expires_on)
    return None


def authentication_deadline(asked_on: date, last_charge_day: date, expires_on: date) -> date:
    """The day a charge waiting for the holder's authentication since ``asked_on`` is given up:
    the cycle's last charge day, and never the day the holder was asked (then the day after),
    nor after the expiry."""
    return min(max(last_charge_day, asked_on + timedelta(days=1)), expires_on)


def awaiting_authentication(
    last: AttemptRecord, today: date, last_charge_day: date, expires_on: date
) -> AutoRenewDecision:
    """An attempt waiting for the holder's authentication: nothing until its deadline, then
    charge-failed (the holder did not authenticate)."""
    deadline = authentication_deadline(last.business_date, last_charge_day, expires_on)
    if today >= deadline:
        return AutoRenewDecision(charge=FAIL, next_action_on=today)
    return AutoRenewDecision(skip_reason="awaiting-authentication", next_action_on=deadline)


def _in_the_charge_window(
    dates: list[date],
    expires_on: date,
    today: date,
    has_payment_method: bool,
    sent: frozenset[tuple[str, str]],
    last: AttemptRecord | None,
    plan: ChargePlan,
) -> AutoRenewDecision:
    """From the first charge date: charge the slot of today, wait for the next one, or fail."""
    if today >= expires_on or not has_payment_method:
        return AutoRenewDecision(charge=FAIL, next_action_on=today)
    notice_stage = plan.notice_stage
    if last is None and (notice_stage.name, CHARGE_NOTICE) not in sent:
        # Never charge a holder who was not told first (a cycle first seen this late): the
        # charge notice today, the charge from tomorrow.
        return AutoRenewDecision(kind=CHARGE_NOTICE, stage=notice_stage, next_action_on=today + timedelta(days=1))
    slot = max(index for index, day in enumerate(dates) if day <= today)
    last_attempt = last.attempt if last is not None else 0
    if slot + 1 > last_attempt:
        return AutoRenewDecision(charge=CHARGE, attempt=slot + 1, next_action_on=today)
    if slot + 1 >= len(dates):
        return AutoRenewDecision(charge=FAIL, next_action_on=today)  # retries exhausted
    return AutoRenewDecision(skip_reason="retry-scheduled", next_action_on=dates[slot + 1])


def _before_the_charge(
    stages: tuple[Stage, ...],
    expires_on: date,
    today: date,
    card_expires_on: date | None,
    sent: frozenset[tuple[str, str]],
    plan: ChargePlan,
) -> AutoRenewDecision:
    """Before the charge: the charge notice, then the card notice, one a day."""
    first_charge = charge_on(expires_on, plan)
    notice_stage = plan.notice_stage
    notice_on = notice_stage.on(expires_on)
    notice_pending = (notice_stage.name, CHARGE_NOTICE) not in sent
    window_start = schedule.add_months(expires_on, -schedule.NOTICE_WINDOW_MONTHS)
    sent_kinds = {kind for _stage, kind in sent}
    card_pending = card_expires_too_soon(card_expires_on, expires_on, plan) and CARD_EXPIRING not in sent_kinds

    due_kind: str | None = None
    due_stage: Stage | None = None
    if notice_pending and today >= notice_on:
        due_kind, due_stage = CHARGE_NOTICE, notice_stage
        notice_pending = False
    elif card_pending and today >= window_start:
        due_kind, due_stage = CARD_EXPIRING, day_stage(stages, expires_on, today)
        card_pending = False

    candidates = [first_charge]
    if notice_pending:
        candidates.append(max(notice_on, today + timedelta(days=1)))
    if card_pending:
        card_on = max(window_start, today + timedelta(days=1))
        if card_on < first_charge:
            candidates.append(card_on)
    next_on = min(candidates)
    if due_kind is None:
        if next_on <= today:
            next_on = today + timedelta(days=1)
        return AutoRenewDecision(skip_reason="auto-renew", next_action_on=next_on)
    return AutoRenewDecision(kind=due_kind, stage=due_stage, next_action_on=next_on)


def next_action_on(decision: AutoRenewDecision, pending_since: date | None, today: date) -> date | None:
    """The mailbox's ``next_action_on`` after the charge work of ``today`` leaves it with ``decision``
    (no charge work left): the decision's date, or today when an email is due (the scan sends it)."""
    if decision.kind is None:
        return decision.next_action_on
    return min(pending_since or today, today)


def failure_reason(last_status: str | None, last_decline_code: str | None, has_payment_method: bool) -> str:
    """Why a cycle ends in charge-failed, from its last attempt (None: no attempt), as the email says it."""
    if last_status is None:
        return NO_PAYMENT_METHOD if not has_payment_method else "not_charged_before_expiry"
    if last_status == ChargeStatus.SOFT_DECLINE.value:
        return "retries_exhausted" if last_decline_code != NOT_CHARGED else "not_charged_before_expiry"
    return last_status


# -- The holder's switch -------------------------------------------------------------------------


def next_charge_on(
    expires_on: date,
    attempts: tuple[AttemptRecord, ...],
    today: date,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> date | None:
    """When the cycle's next charge falls, as the auto-renew page shows it: the first charge date,
    or after a soft decline the next retry's; today when that day has come and the charge has not
    run yet.  None when no charge is left (the retries are over, or the cycle's charge succeeded
    or failed for good)."""
    last = attempts[-1] if attempts else None
    if last is not None and last.status != ChargeStatus.SOFT_DECLINE.value:
        return None
    dates = charge_dates(expires_on, plan)
    done = last.attempt if last is not None else 0
    if done >= len(dates) or today >= expires_on:
        return None
    return max(dates[done], today)


def can_switch_on(expires_on: date, today: date, plan: ChargePlan = DEFAULT_CHARGE_PLAN) -> bool:
    """Whether auto-renew switched on today still renews the current cycle: only before the cycle's
    first charge date, so the holder is charged on the plan's days, after the charge notice."""
    return today < charge_on(expires_on, plan)


def manual_action_on(stages: tuple[Stage, ...], expires_on: date, today: date) -> date | None:
    """Where the manual schedule takes over a mailbox whose auto-renew was switched off ``today``:
    today when one of its stages falls today, else the next stage's date.  The stages already
    passed stay passed: the holder, who switched it off on the page, was just shown the way to
    renew."""
    if any(stage.on(expires_on) == today for stage in stages):
        return today
    return schedule.next_action_on(stages, expires_on, today)
