"""Auto-renew: what is due for a mailbox (a pure rule), and the charge service.

The schedule of one expiry cycle of an auto-renew mailbox (DESIGN.md, "Auto-renew"):

- ``charge-notice`` 30 days before expiry (stage ``-30d``), sent late if the
  job missed the day, as long as the charge has not come;
- ``card-expiring`` once per cycle, from the start of the notice window (three
  months before expiry), when the stored card expires before the charge date;
- the charge 7 days before expiry, then retries after a soft decline or a
  gateway outage 5, 3 and 1 day before expiry (a :class:`ChargePlan`, from the settings).
  A job that missed a charge day charges on its next run, if that is before
  expiry; missed retry slots are passed over, not made up in a burst;
- after a hard decline, a required authentication or the last retry:
  ``charge-failed`` once, with an unpaid renewal order, recorded in the ledger
  under the stage name of that day (a manual stage's name when one falls that
  day, so it is not sent again); from then on the cycle follows the manual
  schedule from its next stage.

One email per mailbox per day: when two are due the same day, the charge
notice goes first and the card notice the day after.

Money moves as intent, then act, then record: the :class:`ChargeIntent` row,
with its idempotency key ``renewal:{mailbox}:{cycle}:{attempt}``, is committed
before the gateway is called; the result is recorded afterwards.  The
``started`` intent is the charge's claim: for ``CHARGE_RECONCILE_AFTER_MINUTES``
(:attr:`ChargePlan.reconcile_after_minutes`, 5 by default) after it was written
every other scan or worker leaves the mailbox alone, as a charge in flight.
Past that, the process that wrote it is taken for dead (killed between the
claim and the answer), and the next run of the same business date, or the
15-minute sweep, looks the charge up: a crash on the last retry day is resolved
that day, not turned into ``charge-failed`` on the expiry day.  A lookup's
claim moves ``next_action_on`` past today; an ``unknown`` answer (a timeout,
``pm_sandbox_timeout``) that the gateway still cannot tell is asked again by the
next day's run.  No database transaction or row lock is held across a gateway
call, so each charge in flight holds at most one connection, and only for
milliseconds.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from worker.rules import pricing, schedule
from worker.rules.notices import decide_notice
from worker.store.db import psycopg_engine, raw_psycopg_cursor
from worker.mail.emails import installation_id, message_id_for
from worker.mail.queue import NewEmail, queue_email
from worker.gateways import ChargeOutcome, ChargeResult, PaymentGateway, describe_payment_method, mask_token
from worker.store.models import ChargeIntent, ChargeStatus, Mailbox, NoticeLedgerEntry, OutboxStatus
from worker.rules.schedule import Stage

log = logging.getLogger(__name__)

CHARGE_NOTICE = "charge-notice"
CARD_EXPIRING = "card-expiring"
CHARGE_SUCCEEDED = "charge-succeeded"
CHARGE_FAILED = "charge-failed"
AUTO_RENEW_KINDS = (CHARGE_NOTICE, CARD_EXPIRING, CHARGE_SUCCEEDED, CHARGE_FAILED)

CURRENCY = "EUR"


@dataclass(frozen=True)
class ChargePlan:
    """When the auto-renew steps fall, in days before expiry (``PEC_RENEWAL_CHARGE_NOTICE_DAYS``,
    ``PEC_RENEWAL_CHARGE_DAYS``): the charge notice, then the charge and its retries."""

    notice_days: int = 30
    charge_days: tuple[int, ...] = (7, 5, 3, 1)
    #: ``PEC_RENEWAL_CHARGE_RECONCILE_AFTER_MINUTES``: how long a ``started`` intent is a charge in
    #: flight; after that its answer is taken for lost and the charge is looked up.
    reconcile_after_minutes: int = 5

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

UNRESOLVED = (ChargeStatus.STARTED.value, ChargeStatus.UNKNOWN.value)
FINAL_FAILURES = (ChargeStatus.HARD_DECLINE.value, ChargeStatus.REQUIRES_AUTHENTICATION.value)
#: Recorded as the decline code when ``lookup`` found no charge and it was too late to make one.
NOT_CHARGED = "not_charged"
NO_PAYMENT_METHOD = "no_payment_method"

# Charge actions, for the charge service (the scan only lists them).
CHARGE = "charge"
RECONCILE = "reconcile"
FAIL = "fail"


# -- The pure rule ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    status: str
    business_date: date


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
    any; ``attempts``: this cycle's charge intents, by attempt number.
    """
    if schedule.mailbox_state(expires_on, today) is schedule.MailboxState.DELETED:
        return AutoRenewDecision(skip_reason="deleted")

    if failed_on is not None:
        # After charge-failed: the manual schedule, from the stage after that day.
        later = tuple(stage for stage in stages if stage.on(expires_on) > failed_on)
        since = max(pending_since, failed_on + timedelta(days=1)) if pending_since else failed_on + timedelta(days=1)
        manual = decide_notice(
            stages=later,
            expires_on=expires_on,
            on_domain=False,
            auto_renew=False,
            pending_since=since,
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

    last = attempts[-1] if attempts else None
    if last is not None and last.status in UNRESOLVED:
        return AutoRenewDecision(charge=RECONCILE, attempt=last.attempt, next_action_on=today)
    if last is not None and last.status == ChargeStatus.SUCCEEDED.value:
        # The expiry moves in the transaction that records the success; a
        # cycle with a success is over.
        return AutoRenewDecision(skip_reason="renewed")
    if last is not None and last.status in FINAL_FAILURES:
        return AutoRenewDecision(charge=FAIL, next_action_on=today)

    notice_stage = plan.notice_stage
    dates = charge_dates(expires_on, plan)
    slot = None
    for index, day in enumerate(dates):
        if day <= today:
            slot = index
    if slot is not None or today >= expires_on:
        if today >= expires_on or not has_payment_method:
            return AutoRenewDecision(charge=FAIL, next_action_on=today)
        if last is None and (notice_stage.name, CHARGE_NOTICE) not in sent:
            # Never charge a holder who was not told first (a cycle first seen
            # this late): the charge notice today, the charge from tomorrow.
            return AutoRenewDecision(
                kind=CHARGE_NOTICE, stage=notice_stage, next_action_on=today + timedelta(days=1)
            )
        last_attempt = last.attempt if last is not None else 0
        if slot + 1 > last_attempt:
            return AutoRenewDecision(charge=CHARGE, attempt=slot + 1, next_action_on=today)
        if slot + 1 >= len(dates):
            return AutoRenewDecision(charge=FAIL, next_action_on=today)  # retries exhausted
        return AutoRenewDecision(skip_reason="retry-scheduled", next_action_on=dates[slot + 1])

    # Before the charge: the charge notice, then the card notice.
    first_charge = dates[0]
    sent_kinds = {kind for _stage, kind in sent}
    notice_on = notice_stage.on(expires_on)
    notice_pending = (notice_stage.name, CHARGE_NOTICE) not in sent
    window_start = schedule.add_months(expires_on, -schedule.NOTICE_WINDOW_MONTHS)
    card_pending = card_expires_too_soon(card_expires_on, expires_on, plan) and CARD_EXPIRING not in sent_kinds

    due_kind = due_stage = None
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


# -- What the emails carry ---------------------------------------------------------------------


def charge_price(mailbox: Mailbox, years: int | None = None) -> pricing.OrderSummary:
    """The renewal's price for the mailbox's current plan and extras, VAT (22%) included in the total."""
    line = pricing.LineInput(mailbox.address, mailbox.plan, mailbox.extra_space_gb or 0, mailbox.extra_archive_gb or 0)
    return pricing.price_order([line], years or mailbox.renewal_years or 1)


def charge_context(
    mailbox: Mailbox,
    *,
    cycle_expires_on: date | None = None,
    today: date | None = None,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    **extra,
) -> dict:
    """The ``charge`` part of an auto-renew email's context: plain data, the method already masked.

    With ``today``, the charge date shown is never before tomorrow (a late charge notice).
    """
    cycle = cycle_expires_on or mailbox.expires_on
    charge_day = charge_on(cycle, plan)
    if today is not None:
        charge_day = max(charge_day, today + timedelta(days=1))
    price = charge_price(mailbox)
    context = {
        "amount_cents": price.total_cents,
        "subtotal_cents": price.subtotal_cents,
        "vat_cents": price.vat_cents,
        "vat_percent": price.vat_percent,
        "years": price.years,
        "charge_on": charge_day.isoformat(),
        "method": describe_payment_method(mailbox.payment_method, mailbox.language),
        "card_expires_on": mailbox.card_expires_on.isoformat() if mailbox.card_expires_on else None,
        "new_expires_on": schedule.add_years(cycle, price.years).isoformat(),
    }
    context.update(extra)
    return context


def mailbox_context(mailbox: Mailbox, cycle_expires_on: date) -> dict:
    return {
        "id": mailbox.id,
        "address": mailbox.address,
        "expires_on": cycle_expires_on.isoformat(),
        "plan": mailbox.plan,
        "domain": None,
    }


def queue_mailbox_email(
    session: Session,
    mailbox: Mailbox,
    *,
    cycle_expires_on: date,
    stage: Stage,
    kind: str,
    context: dict,
    today: date,
    now: datetime,
    mail_domain: str,
) -> int | None:
    """Write one email about one mailbox: its outbox row and ledger row, in the caller's transaction.

    Returns the outbox id, or None when the ledger already holds this
    (mailbox, cycle, stage): nothing is written then.
    """
    exists = session.scalar(
        select(NoticeLedgerEntry.id).where(
            NoticeLedgerEntry.mailbox_id == mailbox.id,
            NoticeLedgerEntry.cycle_expires_on == cycle_expires_on,
            NoticeLedgerEntry.stage == stage.name,
        )
    )
    if exists is not None:
        return None
    queued = queue_email(
        session,
        NewEmail(
            about=[(mailbox.id, cycle_expires_on.isoformat(), stage.name)],
            kind=kind,
            stage=stage.name,
            language=mailbox.language,
            to_address=mailbox.reference_email.lower(),
            context={
                "holder_name": mailbox.holder.name,
                "mailboxes": [mailbox_context(mailbox, cycle_expires_on)],
                **context,
            },
        ),
        mail_domain=mail_domain,
        business_date=today,
        now=now,
    )
    if queued is None:
        return None
    session.add(
        NoticeLedgerEntry(
            mailbox_id=mailbox.id,
            cycle_expires_on=cycle_expires_on,
            stage=stage.name,
            kind=kind,
            business_date=today,
            outbox_message_id=queued.id,
        )
    )
    session.flush()
    return queued.id


# -- State of a cycle, from the database -------------------------------------------------------


@dataclass
class CycleState:
    sent: frozenset[tuple[str, str]]
    failed_on: date | None
    intents: list[ChargeIntent]

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        return tuple(AttemptRecord(i.attempt, i.status, i.business_date) for i in self.intents)


def load_cycle_states(session: Session, mailboxes: Iterable[Mailbox]) -> dict[int, CycleState]:
    """The ledger and the charge intents of each mailbox's current cycle (two queries)."""
    from sqlalchemy import tuple_

    keys = [(mailbox.id, mailbox.expires_on) for mailbox in mailboxes]
    states = {mailbox_id: CycleState(frozenset(), None, []) for mailbox_id, _ in keys}
    if not keys:
        return states
    sent: dict[int, set] = {mailbox_id: set() for mailbox_id, _ in keys}
    for mailbox_id, stage, kind, business_date in session.execute(
        select(
            NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.stage, NoticeLedgerEntry.kind, NoticeLedgerEntry.business_date
        ).where(tuple_(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.cycle_expires_on).in_(keys))
    ):
        sent[mailbox_id].add((stage, kind))
        if kind == CHARGE_FAILED:
            states[mailbox_id].failed_on = business_date
    for mailbox_id, pairs in sent.items():
        states[mailbox_id].sent = frozenset(pairs)
    for intent in session.scalars(
        select(ChargeIntent)
        .where(tuple_(ChargeIntent.mailbox_id, ChargeIntent.cycle_expires_on).in_(keys))
        .order_by(ChargeIntent.mailbox_id, ChargeIntent.attempt)
    ):
        states[intent.mailbox_id].intents.append(intent)
    return states


def decide_for(
    mailbox: Mailbox,
    state: CycleState,
    stages: tuple[Stage, ...],
    today: date,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> AutoRenewDecision:
    return decide_auto_renew(
        stages=stages,
        expires_on=mailbox.expires_on,
        today=today,
        card_expires_on=mailbox.card_expires_on,
        has_payment_method=bool(mailbox.payment_method),
        sent=state.sent,
        failed_on=state.failed_on,
        attempts=state.attempts,
        pending_since=mailbox.next_action_on,
        plan=plan,
    )


def is_auto_renew(mailbox: Mailbox) -> bool:
    return bool(mailbox.auto_renew) and mailbox.domain_id is None


# -- The charge service ------------------------------------------------------------------------


def idempotency_key(mailbox_id: int, cycle_expires_on: date, attempt: int) -> str:
    return f"renewal:{mailbox_id}:{cycle_expires_on.isoformat()}:{attempt}"


@dataclass
class ChargeRun:
    """What one call of :func:`charge_mailbox` did."""

    mailbox_id: int
    #: "skipped" (not due, or claimed elsewhere), "succeeded", "failed" (charge-failed sent),
    #: "retry" (soft decline, retried later), "unknown" (still unresolved), "idle" (nothing for charges).
    outcome: str = "skipped"
    charges: int = 0  # gateway.charge calls
    lookups: int = 0  # gateway.lookup calls
    outbox_ids: list[int] = field(default_factory=list)
    emails: Counter = field(default_factory=Counter)  # (kind, stage) -> emails


@dataclass
class ChargesResult:
    examined: int = 0
    outcomes: Counter = field(default_factory=Counter)
    charges: int = 0
    lookups: int = 0
    errors: int = 0
    outbox_ids: list[int] = field(default_factory=list)
    emails: Counter = field(default_factory=Counter)

    def add(self, run: ChargeRun) -> None:
        self.examined += 1
        self.outcomes[run.outcome] += 1
        self.charges += run.charges
        self.lookups += run.lookups
        self.outbox_ids.extend(run.outbox_ids)
        self.emails.update(run.emails)

    def merge(self, other: "ChargesResult") -> None:
        self.examined += other.examined
        self.outcomes.update(other.outcomes)
        self.charges += other.charges
        self.lookups += other.lookups
        self.errors += other.errors
        self.outbox_ids.extend(other.outbox_ids)
        self.emails.update(other.emails)

    def as_dict(self) -> dict:
        return {
            "examined": self.examined,
            "outcomes": dict(sorted(self.outcomes.items())),
            "gateway_charges": self.charges,
            "gateway_lookups": self.lookups,
            "errors": self.errors,
        }


#: Steps of one mailbox's charge work in one run (claim/record rounds); a safety bound.
MAX_ROUNDS = 6


@dataclass(frozen=True)
class ChargeDay:
    """What every step of one day's charge work reads: the business date, the clock (each step
    takes ``now`` from it when it writes), the notice stages, the domain of the Message-IDs and
    the charge plan."""

    today: date
    clock: Callable[[], datetime]
    mail_domain: str
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES
    plan: ChargePlan = DEFAULT_CHARGE_PLAN


def _lock(session: Session, mailbox_id: int, today: date, *, claimed: bool) -> Mailbox | None:
    query = (
        select(Mailbox)
        .options(joinedload(Mailbox.holder))
        .where(Mailbox.id == mailbox_id, Mailbox.auto_renew.is_(True), Mailbox.domain_id.is_(None))
    )
    if claimed:
        return session.scalars(query.with_for_update(of=Mailbox)).first()
    return session.scalars(
        query.where(Mailbox.next_action_on <= today).with_for_update(of=Mailbox, skip_locked=True)
    ).first()


def _record(
    session: Session,
    mailbox: Mailbox,
    intent: ChargeIntent,
    answer: ChargeResult,
    run: ChargeRun,
    day: ChargeDay,
    now: datetime,
) -> None:
    """Record the gateway's answer; on success move the expiry and write the receipt, in the same transaction."""
    if intent.status not in UNRESOLVED:
        return
    intent.status = answer.outcome.value
    intent.reference = answer.reference or intent.reference
    intent.decline_code = answer.decline_code
    if answer.outcome is not ChargeOutcome.UNKNOWN:
        intent.resolved_at = now
    _log_answer(intent, mailbox.id, answer)
    if answer.outcome is ChargeOutcome.SUCCEEDED and mailbox.expires_on == intent.cycle_expires_on:
        old = intent.cycle_expires_on
        new = schedule.add_years(old, intent.years)
        stage = day_stage(day.stages, old, day.today)
        context = {"charge": _receipt_context(mailbox, intent, day, intent.reference)}
        outbox_id = queue_mailbox_email(
            session, mailbox, cycle_expires_on=old, stage=stage, kind=CHARGE_SUCCEEDED, context=context,
            today=day.today, now=now, mail_domain=day.mail_domain,
        )  # fmt: skip
        if outbox_id is not None:
            run.outbox_ids.append(outbox_id)
            run.emails[(CHARGE_SUCCEEDED, stage.name)] += 1
        mailbox.expires_on = new
        run.outcome = "succeeded"
    elif answer.outcome is ChargeOutcome.SUCCEEDED:
        # The cycle was renewed another way (a registered manual payment) while this
        # charge was unresolved: the money moved, the expiry is not moved twice.
        log.warning(
            "charge %s succeeded but mailbox %s was already renewed (expiry %s): refund needed",
            intent.idempotency_key, mailbox.id, mailbox.expires_on,
        )  # fmt: skip
        run.outcome = "succeeded-already-renewed"
    session.flush()


def _log_answer(intent, mailbox_id: int, answer: ChargeResult) -> None:
    """The line each recorded answer logs (both paths: the fast path's test compares them)."""
    log.info(
        "charge %s for mailbox %s (%s): %s",
        intent.idempotency_key,
        mailbox_id,
        mask_token(intent.payment_method),
        answer.outcome.value,
    )


def _receipt_context(mailbox, intent, day: ChargeDay, reference: str | None) -> dict:
    """The ``charge`` part of a charge-succeeded email: what the intent charged for its cycle.

    ``mailbox`` and ``intent`` are ORM objects (the ORM path) or the fast path's rows.
    """
    old = intent.cycle_expires_on
    price = charge_price(mailbox, intent.years)
    return charge_context(
        mailbox,
        cycle_expires_on=old,
        plan=day.plan,
        amount_cents=intent.amount_cents,
        subtotal_cents=price.subtotal_cents,
        vat_cents=intent.amount_cents - price.subtotal_cents,
        years=intent.years,
        new_expires_on=schedule.add_years(old, intent.years).isoformat(),
        charged_on=day.today.isoformat(),
        reference=reference,
    )


def _fail(
    session: Session,
    mailbox: Mailbox,
    state: CycleState,
    run: ChargeRun,
    day: ChargeDay,
    now: datetime,
) -> None:
    """charge-failed, once: the unpaid renewal order and the email with the signed link that leads to it."""
    from worker.services.orders import create_unpaid_renewal_order

    today = day.today
    order = create_unpaid_renewal_order(session, mailbox, mailbox.renewal_years or 1, now, today)
    last = state.intents[-1] if state.intents else None
    if last is None:
        reason = NO_PAYMENT_METHOD if not mailbox.payment_method else "not_charged_before_expiry"
    elif last.status == ChargeStatus.SOFT_DECLINE.value:
        reason = "retries_exhausted" if last.decline_code != NOT_CHARGED else "not_charged_before_expiry"
    else:
        reason = last.status
    stage = day_stage(day.stages, mailbox.expires_on, today)
    context = {
        "charge": charge_context(
            mailbox,
            plan=day.plan,
            amount_cents=order.total_cents,
            subtotal_cents=order.subtotal_cents,
            vat_cents=order.vat_cents,
            years=order.years,
            reason=reason,
            order_number=order.order_number,
        )
    }
    outbox_id = queue_mailbox_email(
        session, mailbox, cycle_expires_on=mailbox.expires_on, stage=stage, kind=CHARGE_FAILED, context=context,
        today=today, now=now, mail_domain=day.mail_domain,
    )  # fmt: skip
    if outbox_id is None:
        # The day's stage was already used by another email: record the failure the day after's
        # way would lose it, so name it by the day offset, which no other email of the cycle uses.
        stage = Stage(days=(today - mailbox.expires_on).days)
        outbox_id = queue_mailbox_email(
            session, mailbox, cycle_expires_on=mailbox.expires_on, stage=stage, kind=CHARGE_FAILED,
            context=context, today=today, now=now, mail_domain=day.mail_domain,
        )  # fmt: skip
    if outbox_id is not None:
        run.outbox_ids.append(outbox_id)
        run.emails[(CHARGE_FAILED, stage.name)] += 1
    run.outcome = "failed"
    log.info("charge-failed for mailbox %s (%s); unpaid order %s", mailbox.id, reason, order.order_number)


def charge_mailbox(
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    mailbox_id: int,
    *,
    today: date,
    clock: Callable[[], datetime],
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES,
    mail_domain: str,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    fast: bool = True,
) -> ChargeRun:
    """Do the charge work due today for one mailbox: reconcile, charge, record, and tell the holder.

    Safe to call twice, from many threads or processes: the mailbox is taken
    with ``FOR UPDATE SKIP LOCKED`` only while it is due, and the intent is
    committed (the claim) before any gateway call; another caller that finds it
    ``started`` and younger than ``plan.reconcile_after_minutes`` leaves the
    mailbox alone.  After the call it is locked again (by this claimant only) to
    record.

    On PostgreSQL through psycopg (and unless ``fast`` is False) a plain charge
    and its success go through :func:`_charge_mailbox_fast`, which writes the
    same rows with fewer statements; everything else, and SQLite, through the ORM.
    """
    run = ChargeRun(mailbox_id)
    day = ChargeDay(today=today, clock=clock, mail_domain=mail_domain, stages=stages, plan=plan)
    engine = psycopg_engine(session_factory) if fast else None
    if engine is not None:
        return _charge_mailbox_fast(engine, session_factory, gateway, mailbox_id, run, day)
    return _charge_rounds(session_factory, gateway, mailbox_id, run, day, claimed=False, pending=None)


def _charge_rounds(
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    mailbox_id: int,
    run: ChargeRun,
    day: ChargeDay,
    *,
    claimed: bool,
    pending: tuple[int, ChargeResult] | None,
    rounds: int = MAX_ROUNDS,
) -> ChargeRun:
    """The charge work through the ORM, from a given point: not claimed yet, or claimed by
    this caller with the gateway's answer ``pending`` (intent id, answer) still to record."""
    today = day.today
    looked_up: set[int] = set()
    for _round in range(rounds):
        call: Callable[[], ChargeResult] | None = None
        call_intent_id = None
        with session_factory() as session:
            mailbox = _lock(session, mailbox_id, today, claimed=claimed)
            if mailbox is None:
                session.rollback()
                return run
            now = day.clock()
            if pending is not None:
                intent = session.get(ChargeIntent, pending[0])
                _record(session, mailbox, intent, pending[1], run, day, now)
                pending = None
            for _step in range(MAX_ROUNDS):
                state = load_cycle_states(session, [mailbox])[mailbox.id]
                decision = decide_for(mailbox, state, day.stages, today, day.plan)
                if decision.charge == FAIL:
                    _fail(session, mailbox, state, run, day, now)
                    continue
                if decision.charge is None:
                    if decision.kind is None:
                        mailbox.next_action_on = decision.next_action_on
                    else:
                        mailbox.next_action_on = min(mailbox.next_action_on or today, today)  # the scan sends it
                    if run.outcome == "skipped":
                        run.outcome = "retry" if decision.skip_reason == "retry-scheduled" else "idle"
                    break
                # A gateway call is due: claim (commit) first, call after.
                if decision.charge == RECONCILE:
                    intent = state.intents[-1]
                    if intent.id in looked_up:
                        run.outcome = "unknown"  # still unresolved: tomorrow's run asks again
                        break
                    if intent.status == ChargeStatus.STARTED.value and day.plan.in_flight(intent.created_at, now):
                        break  # another process's charge, awaiting its answer: its claim (run.outcome "skipped")
                    looked_up.add(intent.id)
                    # The lookup's claim: no other run takes the mailbox today.
                    mailbox.next_action_on = today + timedelta(days=1)
                    call = _reconcile_call(gateway, intent, today, mailbox.expires_on, run)
                else:
                    intent = _new_intent(mailbox, decision.attempt, today, now)
                    session.add(intent)
                    # Still due today: the new started intent is the claim, and if this process dies
                    # before recording the answer, a run after the claim's minutes looks it up.
                    mailbox.next_action_on = today
                    call = _charge_call(gateway, intent, run)
                session.flush()
                call_intent_id = intent.id
                break
            session.commit()
        claimed = True
        if call is None:
            return run
        pending = (call_intent_id, call())
    return run


def _new_intent(mailbox: Mailbox, attempt: int, today: date, now: datetime) -> ChargeIntent:
    price = charge_price(mailbox)
    return ChargeIntent(
        mailbox_id=mailbox.id,
        cycle_expires_on=mailbox.expires_on,
        attempt=attempt,
        idempotency_key=idempotency_key(mailbox.id, mailbox.expires_on, attempt),
        amount_cents=price.total_cents,
        currency=CURRENCY,
        payment_method=mailbox.payment_method,
        years=price.years,
        status=ChargeStatus.STARTED.value,
        business_date=today,
        created_at=now,
    )


def _description(intent: ChargeIntent) -> str:
    return _describe(intent.mailbox_id, intent.cycle_expires_on)


def _describe(mailbox_id: int, cycle_expires_on: date) -> str:
    return f"PEC renewal, mailbox {mailbox_id}, expiry {cycle_expires_on.isoformat()}"


def _charge_call(gateway: PaymentGateway, intent: ChargeIntent, run: ChargeRun) -> Callable[[], ChargeResult]:
    params = {
        "payment_method": intent.payment_method,
        "amount_cents": intent.amount_cents,
        "currency": intent.currency,
        "idempotency_key": intent.idempotency_key,
        "description": _description(intent),
    }
    return _charge_call_with(gateway, params, run)


def _charge_call_with(gateway: PaymentGateway, params: dict, run: ChargeRun) -> Callable[[], ChargeResult]:
    def call() -> ChargeResult:
        run.charges += 1
        answer = gateway.charge(**params)
        if answer.outcome is ChargeOutcome.UNKNOWN:
            # The answer was lost: ask at once; the loop records what the gateway knows.
            run.lookups += 1
            found = gateway.lookup(params["idempotency_key"])
            if found is not None and found.outcome is not ChargeOutcome.UNKNOWN:
                return found
        return answer

    return call


def _reconcile_call(
    gateway: PaymentGateway, intent: ChargeIntent, today: date, expires_on: date, run: ChargeRun
) -> Callable[[], ChargeResult]:
    key = intent.idempotency_key
    params = {
        "payment_method": intent.payment_method,
        "amount_cents": intent.amount_cents,
        "currency": intent.currency,
        "idempotency_key": key,
        "description": _description(intent),
    }

    def call() -> ChargeResult:
        run.lookups += 1
        found = gateway.lookup(key)
        if found is not None:
            return found
        # No money moved under this key: charging with the same key is safe, if still in time.
        if today < expires_on:
            run.charges += 1
            answer = gateway.charge(**params)
            if answer.outcome is ChargeOutcome.UNKNOWN:
                run.lookups += 1
                again = gateway.lookup(key)
                if again is not None and again.outcome is not ChargeOutcome.UNKNOWN:
                    return again
            return answer
        return ChargeResult(ChargeOutcome.SOFT_DECLINE, None, "not charged before expiry", NOT_CHARGED)

    return call


# -- The fast path: PostgreSQL through psycopg ---------------------------------------------------
#
# The ORM path costs about 17 statements and 11 ms of CPU per charge (bench/charges.py): a
# process under the GIL then charges at most ~75 a second, below what 32 gateway calls in
# flight at 300 ms allow.  Here the same two transactions are two statements each, as
# prepared statements on the pooled psycopg connection: the claim (the mailbox locked with
# its holder, this cycle's ledger and intents, then the intent and the claim in one statement)
# and the record of a success (the same read, then the intent's outcome, the receipt's outbox
# and ledger rows and the mailbox's new expiry in one statement).  The rule is the same
# function (decide_auto_renew) and the email the same context.  Anything else (reconcile,
# charge-failed, a decline, a lost answer, a mailbox changed meanwhile) goes to the ORM path
# from the same point, after a rollback, so it does exactly what it did.

#: The mailbox locked, with what the rule and the emails need: the holder's name, and the
#: ledger rows and charge intents of its current cycle and of any later one.
_FAST_READ = """
SELECT m.id, m.address, m.plan, m.extra_space_gb, m.extra_archive_gb, m.expires_on, m.payment_method,
       m.card_expires_on, m.renewal_years, m.language, m.next_action_on, m.reference_email, h.name,
       (SELECT json_agg(json_build_array(l.cycle_expires_on, l.stage, l.kind, l.business_date))
          FROM notice_ledger l WHERE l.mailbox_id = m.id AND l.cycle_expires_on >= m.expires_on),
       (SELECT json_agg(json_build_array(i.id, i.cycle_expires_on, i.attempt, i.status, i.business_date,
                                         i.reference, i.years, i.amount_cents, i.idempotency_key, i.payment_method)
                        ORDER BY i.cycle_expires_on, i.attempt)
          FROM charge_intents i WHERE i.mailbox_id = m.id AND i.cycle_expires_on >= m.expires_on)
FROM mailboxes m JOIN holders h ON h.id = m.holder_id
WHERE m.id = $1 AND m.auto_renew IS true AND m.domain_id IS NULL"""
#: As _lock(claimed=False): only while due, skipping a mailbox another claimant holds.
_FAST_READ_DUE = _FAST_READ + " AND m.next_action_on <= $2 FOR UPDATE OF m SKIP LOCKED"
#: As _lock(claimed=True).
_FAST_READ_CLAIMED = _FAST_READ + " FOR UPDATE OF m"

_FAST_CLAIM = """
WITH claim AS (UPDATE mailboxes SET next_action_on = $1 WHERE id = $2)
INSERT INTO charge_intents (mailbox_id, cycle_expires_on, attempt, idempotency_key, amount_cents, currency,
                            payment_method, years, status, business_date, created_at)
VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING id"""

#: The success: the intent's outcome, the receipt (outbox, then ledger, unless the ledger holds
#: the day's stage: ``$14`` false, or the Message-ID exists: as queue_mailbox_email), the expiry.
_FAST_RECORD = """
WITH intent AS (
    UPDATE charge_intents SET status = $1, reference = $2, decline_code = $3, resolved_at = $4 WHERE id = $5
), outbox AS (
    INSERT INTO outbox_messages (message_id, kind, stage, language, to_address, business_date, context, status,
                                 attempts, created_at)
    SELECT $6, $7, $8, $9, $10, $11, $12::json, $13, 0, $4 WHERE $14
    ON CONFLICT (message_id) DO NOTHING
    RETURNING id
), ledger AS (
    INSERT INTO notice_ledger (mailbox_id, cycle_expires_on, stage, kind, business_date, outbox_message_id)
    SELECT $15, $16, $8, $7, $11, id FROM outbox
), mailbox AS (
    UPDATE mailboxes SET expires_on = $17, next_action_on = $18 WHERE id = $15
)
SELECT (SELECT id FROM outbox)"""


class _FastMailbox(NamedTuple):
    """A row of _FAST_READ: the attributes charge_price, charge_context and mailbox_context read."""

    id: int
    address: str
    plan: str
    extra_space_gb: int | None
    extra_archive_gb: int | None
    expires_on: date
    payment_method: str | None
    card_expires_on: date | None
    renewal_years: int | None
    language: str
    next_action_on: date | None
    reference_email: str
    holder_name: str


class _FastIntent(NamedTuple):
    id: int
    cycle_expires_on: date
    attempt: int
    status: str
    business_date: date
    reference: str | None
    years: int
    amount_cents: int
    idempotency_key: str
    payment_method: str


_FastLedger = tuple[date, str, str, date]  # cycle, stage, kind, business date


def _fast_read(cursor, sql: str, parameters: tuple) -> tuple[_FastMailbox, list[_FastLedger], list[_FastIntent]] | None:
    cursor.execute(sql, parameters, prepare=True)
    row = cursor.fetchone()
    if row is None:
        return None
    iso = date.fromisoformat
    ledger = [(iso(cycle), stage, kind, iso(on)) for cycle, stage, kind, on in row[13] or ()]
    intents = [
        _FastIntent(intent_id, iso(cycle), attempt, status, iso(on), *rest)
        for intent_id, cycle, attempt, status, on, *rest in row[14] or ()
    ]
    return _FastMailbox(*row[:13]), ledger, intents


def _fast_decide(
    mailbox: _FastMailbox,
    ledger: list[_FastLedger],
    intents: list[_FastIntent],
    cycle: date,
    day: ChargeDay,
) -> AutoRenewDecision:
    """decide_for, on the rows of _FAST_READ for the cycle that expires on ``cycle``."""
    sent = set()
    failed_on = None
    for cycle_on, stage, kind, business_date in ledger:
        if cycle_on == cycle:
            sent.add((stage, kind))
            if kind == CHARGE_FAILED:
                failed_on = business_date
    return decide_auto_renew(
        stages=day.stages,
        expires_on=cycle,
        today=day.today,
        card_expires_on=mailbox.card_expires_on,
        has_payment_method=bool(mailbox.payment_method),
        sent=frozenset(sent),
        failed_on=failed_on,
        attempts=tuple(
            AttemptRecord(i.attempt, i.status, i.business_date) for i in intents if i.cycle_expires_on == cycle
        ),
        pending_since=mailbox.next_action_on,
        plan=day.plan,
    )


def _charge_mailbox_fast(
    engine: Engine,
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    mailbox_id: int,
    run: ChargeRun,
    day: ChargeDay,
) -> ChargeRun:
    today = day.today
    with raw_psycopg_cursor(engine, "pec_charges_cursor") as (connection, cursor):
        read = _fast_read(cursor, _FAST_READ_DUE, (mailbox_id, today))
        if read is None:
            connection.rollback()
            return run  # not due, or claimed elsewhere
        mailbox, ledger, intents = read
        now = day.clock()
        decision = _fast_decide(mailbox, ledger, intents, mailbox.expires_on, day)
        if decision.charge != CHARGE:
            connection.rollback()
            mailbox = None
        else:
            # Claim (commit) first, call after: the started intent is the claim (the mailbox stays
            # due today, as in _charge_rounds).
            price = charge_price(mailbox)  # type: ignore[arg-type]
            params = {
                "payment_method": mailbox.payment_method,
                "amount_cents": price.total_cents,
                "currency": CURRENCY,
                "idempotency_key": idempotency_key(mailbox.id, mailbox.expires_on, decision.attempt),
                "description": _describe(mailbox.id, mailbox.expires_on),
            }
            cursor.execute(
                _FAST_CLAIM,
                (
                    today, mailbox.id, mailbox.expires_on, decision.attempt,
                    params["idempotency_key"], price.total_cents, CURRENCY, mailbox.payment_method, price.years,
                    ChargeStatus.STARTED.value, today, now,
                ),
                prepare=True,
            )  # fmt: skip
            intent_id = cursor.fetchone()[0]
            connection.commit()
    if mailbox is None:  # reconcile or charge-failed: the ORM path, from the start
        return _charge_rounds(session_factory, gateway, mailbox_id, run, day, claimed=False, pending=None)
    answer = _charge_call_with(gateway, params, run)()
    succeeded = answer.outcome is ChargeOutcome.SUCCEEDED
    if succeeded and _record_success_fast(engine, mailbox_id, intent_id, answer, run, day):
        return run
    return _charge_rounds(
        session_factory, gateway, mailbox_id, run, day, claimed=True, pending=(intent_id, answer), rounds=MAX_ROUNDS - 1
    )


def _record_success_fast(
    engine: Engine,
    mailbox_id: int,
    intent_id: int,
    answer: ChargeResult,
    run: ChargeRun,
    day: ChargeDay,
) -> bool:
    """_record of a success, and the decision of the new cycle after it, in one transaction.

    False, with nothing written, when the ORM path must do it: the mailbox is no longer
    auto-renew, the intent is resolved or of another cycle, or the new cycle has work today.
    """
    with raw_psycopg_cursor(engine, "pec_charges_cursor") as (connection, cursor):
        read = _fast_read(cursor, _FAST_READ_CLAIMED, (mailbox_id,))
        intent = None
        if read is not None:
            mailbox, ledger, intents = read
            intent = next((i for i in intents if i.id == intent_id), None)
        if intent is None or intent.status not in UNRESOLVED or intent.cycle_expires_on != mailbox.expires_on:
            connection.rollback()
            return False
        now = day.clock()
        today = day.today
        old = intent.cycle_expires_on
        new = schedule.add_years(old, intent.years)
        after = _fast_decide(mailbox._replace(expires_on=new), ledger, intents, new, day)
        if after.charge is not None:
            connection.rollback()
            return False
        next_action_on = after.next_action_on if after.kind is None else min(mailbox.next_action_on or today, today)
        reference = answer.reference or intent.reference
        _log_answer(intent, mailbox.id, answer)
        stage = day_stage(day.stages, old, today)
        context = {
            "holder_name": mailbox.holder_name,
            "mailboxes": [mailbox_context(mailbox, old)],  # type: ignore[arg-type]
            "charge": _receipt_context(mailbox, intent, day, reference),
        }
        unused_stage = not any(cycle == old and name == stage.name for cycle, name, _kind, _on in ledger)
        cursor.execute(
            _FAST_RECORD,
            (
                answer.outcome.value, reference, answer.decline_code, now, intent.id,
                message_id_for([(mailbox.id, old.isoformat(), stage.name)], day.mail_domain, installation_id=installation_id(engine)), CHARGE_SUCCEEDED,
                stage.name, mailbox.language, mailbox.reference_email.lower(), today, json.dumps(context),
                OutboxStatus.PENDING.value, unused_stage,
                mailbox.id, old, new, next_action_on,
            ),
            prepare=True,
        )  # fmt: skip
        outbox_id = cursor.fetchone()[0]
        connection.commit()
    if outbox_id is not None:
        run.outbox_ids.append(outbox_id)
        run.emails[(CHARGE_SUCCEEDED, stage.name)] += 1
    run.outcome = "succeeded"
    return True


def due_charge_ids(
    session: Session,
    today: date,
    *,
    after_id: int = 0,
    limit: int = 1000,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> list[int]:
    """Auto-renew mailboxes that may have charge work today (keyset page by id).

    A superset: those due whose charge window has opened, and those with an
    unresolved intent.  :func:`charge_mailbox` decides exactly.
    """
    return list(
        session.scalars(
            select(Mailbox.id)
            .where(
                Mailbox.id > after_id,
                Mailbox.auto_renew.is_(True),
                Mailbox.domain_id.is_(None),
                Mailbox.next_action_on <= today,
                Mailbox.expires_on <= today + timedelta(days=max(plan.charge_days)),
            )
            .order_by(Mailbox.id)
            .limit(limit)
        )
    )


def iter_due_charge_batches(
    session: Session, today: date, batch_size: int, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> Iterator[list[int]]:
    last = 0
    while True:
        ids = due_charge_ids(session, today, after_id=last, limit=batch_size, plan=plan)
        if not ids:
            return
        yield ids
        last = ids[-1]


def run_charges(
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    mailbox_ids: Iterable[int],
    *,
    today: date,
    clock: Callable[[], datetime],
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES,
    mail_domain: str,
    concurrency: int = 1,
    progress: Callable[[int], None] | None = None,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    fast: bool = True,
) -> ChargesResult:
    """Charge these mailboxes, ``concurrency`` at a time (threads; each charge uses its own sessions).

    An error on one mailbox is logged and counted, and does not stop the
    others: its intent (if any) stays unresolved and is reconciled next run.
    ``fast=False`` keeps every charge on the ORM path (the reference the fast path is tested against).
    """
    total = ChargesResult()
    ids = list(dict.fromkeys(mailbox_ids))
    if not ids:
        return total

    def one(mailbox_id: int) -> ChargeRun | None:
        try:
            return charge_mailbox(
                session_factory, gateway, mailbox_id, today=today, clock=clock, stages=stages, mail_domain=mail_domain,
                plan=plan, fast=fast,
            )  # fmt: skip
        except Exception:
            log.exception("charge of mailbox %s failed; it is reconciled on the next run", mailbox_id)
            return None

    workers = max(1, min(concurrency, len(ids)))
    if workers == 1:
        results: Iterable = map(one, ids)
        for run in results:
            _collect(total, run, progress)
        return total
    # Each charge runs in a copy of this thread's context: its log lines carry the task's
    # id and business date (worker.logs), as the lines of the thread that started it do.
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="charge") as pool:
        for run in pool.map(lambda mailbox_id: context.copy().run(one, mailbox_id), ids):
            _collect(total, run, progress)
    return total


def _collect(total: ChargesResult, run: ChargeRun | None, progress) -> None:
    if run is None:
        total.examined += 1
        total.errors += 1
    else:
        total.add(run)
    if progress:
        progress(1)


__all__ = [
    "AUTO_RENEW_KINDS",
    "AttemptRecord",
    "AutoRenewDecision",
    "CHARGE_DAYS_BEFORE_EXPIRY",
    "ChargePlan",
    "DEFAULT_CHARGE_PLAN",
    "ChargeRun",
    "ChargesResult",
    "charge_mailbox",
    "decide_auto_renew",
    "run_charges",
]

