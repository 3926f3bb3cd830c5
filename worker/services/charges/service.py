"""One mailbox's charge work: reconcile, charge, record, and tell the holder.

Money moves as intent, then act, then record: the ``charge_intents`` row, with its
idempotency key ``renewal:{mailbox}:{cycle}:{attempt}``, is committed before the gateway
is called; the answer is recorded afterwards.  The ``started`` intent is the charge's
claim: for ``CHARGE_RECONCILE_AFTER_MINUTES`` (:attr:`ChargePlan.reconcile_after_minutes`,
5 by default) after it was written every other scan or worker leaves the mailbox alone,
as a charge in flight.  Past that, the process that wrote it is taken for dead (killed
between the claim and the answer), and the next run of the same business date, or the
15-minute sweep, looks the charge up: a crash on the last retry day is resolved that
day, not turned into ``charge-failed`` on the expiry day.  A lookup's claim moves
``next_action_on`` past today; an ``unknown`` answer (a timeout, ``pm_sandbox_timeout``)
that the gateway still cannot tell is asked again by the next day's run.  No database
transaction or row lock is held across a gateway call, so each charge in flight holds
at most one connection, and only for milliseconds.

Each transaction is a few SQLAlchemy Core statements, the same on PostgreSQL and SQLite:
the mailbox locked with its cycles (:func:`~worker.services.charges.state.lock_mailbox`),
then the claim (one ``INSERT … RETURNING`` of the intent), or the record (one ``UPDATE …
RETURNING`` of the intent, the receipt's outbox and ledger rows, the platform's
``mailbox.renewed`` event, and one ``UPDATE`` of the mailbox).  A charge-failed, which opens the
unpaid renewal order, goes through the ORM.  What a transaction writes besides the intent (the
invoice, the emails, the new expiry, the unpaid order) is in :mod:`~worker.services.charges.outcomes`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, update
from sqlalchemy.orm import Session, sessionmaker

from worker.gateways import ChargeOutcome, ChargeResult, PaymentGateway, mask_token
from worker.rules import schedule
from worker.rules.auto_renew import (
    AWAITING_AUTHENTICATION,
    CHARGE,
    CURRENCY,
    DEFAULT_CHARGE_PLAN,
    FAIL,
    RECONCILE,
    UNRESOLVED,
    ChargePlan,
    ChargeStatus,
    idempotency_key,
    next_action_on,
)
from worker.rules.einvoice import Seller
from worker.rules.schedule import Stage
from worker.services import invoices
from worker.services.charges.calls import Call, charge_call, charge_parameters, reconcile_call
from worker.services.charges.emails import charge_price, queue_charge_refund_email
from worker.services.charges.outcomes import ChargeDay, CycleWrites, last_intent_id
from worker.services.charges.results import ChargeRun
from worker.services.charges.state import LockedMailbox, decide_for, lock_mailbox, read_intent
from worker.services.orders import pending_manual_order
from worker.services.payments.refunds import AUTOMATIC, settle_refund, start_refund
from worker.store.models import ChargeIntent

log = logging.getLogger(__name__)

#: Steps of one mailbox's charge work in one run (claim/record rounds); a safety bound.
MAX_ROUNDS = 6

_INTENTS = ChargeIntent.__table__
_CLAIM = insert(_INTENTS).returning(_INTENTS.c.id)
#: The gateway's answer, on an intent still unresolved (the reference and the time of
#: resolution are kept when the answer has none: an ``unknown`` answer resolves nothing).


def _record_statement(statuses: tuple[str, ...]) -> Any:
    """The gateway's answer written on an intent whose status is one of ``statuses``."""
    return (
        update(_INTENTS)
        .where(_INTENTS.c.id == bindparam("intent_id"), _INTENTS.c.status.in_(statuses))
        .values(
            status=bindparam("answer_status"),
            reference=func.coalesce(bindparam("answer_reference"), _INTENTS.c.reference),
            decline_code=bindparam("answer_decline_code"),
            resolved_at=func.coalesce(bindparam("answer_resolved_at"), _INTENTS.c.resolved_at),
        )
        .returning(
            _INTENTS.c.id,
            _INTENTS.c.cycle_expires_on,
            _INTENTS.c.status,
            _INTENTS.c.idempotency_key,
            _INTENTS.c.payment_method,
            _INTENTS.c.amount_cents,
            _INTENTS.c.currency,
            _INTENTS.c.years,
            _INTENTS.c.reference,
            _INTENTS.c.attempt,
            _INTENTS.c.business_date,
        )
    )


_RECORD = _record_statement(UNRESOLVED)
#: The answer to a charge that waited for the holder's authentication (once: the first answer wins).
_RECORD_AUTHENTICATED = _record_statement((AWAITING_AUTHENTICATION,))


#: A claimed gateway call: the intent's id, and the call.
Claim = tuple[int, Call]


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
    seller: Seller | None = None,
) -> ChargeRun:
    """Do the charge work due today for one mailbox: reconcile, charge, record, and tell the holder.

    Safe to call twice, from many threads or processes: the mailbox is taken
    with ``FOR UPDATE SKIP LOCKED`` only while it is due, and the intent is
    committed (the claim) before any gateway call; another caller that finds it
    ``started`` and younger than ``plan.reconcile_after_minutes`` leaves the
    mailbox alone.  After the call it is locked again (by this claimant only) to
    record.
    """
    run = ChargeRun(mailbox_id)
    day = ChargeDay(today=today, clock=clock, mail_domain=mail_domain, stages=stages, plan=plan, seller=seller)
    engine = bound_engine(session_factory)
    looked_up: set[int] = set()
    answered: tuple[int, ChargeResult] | None = None
    for _round in range(MAX_ROUNDS):
        with engine.connect() as connection:
            work = _Work(connection, session_factory, gateway, run, day, looked_up)
            claim = work.round(mailbox_id, answered)
            connection.commit()
        if claim is None:
            break
        intent_id, call = claim
        answered = (intent_id, call())
    return _settle_refunds(session_factory, gateway, run, day)


def complete_authenticated_charge(
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    intent_id: int,
    answer: ChargeResult,
    *,
    today: date,
    clock: Callable[[], datetime],
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES,
    mail_domain: str,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    seller: Seller | None = None,
) -> ChargeRun:
    """Record the answer to an auto-renew charge that waited for the holder's authentication
    (the return page after it, or the gateway's webhook), exactly once, whichever comes first.
    The money of a charge authenticated once auto-renew was switched off, or once the cycle had
    ended in charge-failed (its unpaid order is the way to pay), goes back (refunded).

    Succeeded: the same record as a successful charge (:meth:`_Work.record`): the invoice, the
    receipt, the new expiry and the platform's event, under the mailbox's lock, on the intent
    still ``requires_authentication`` (a second answer finds it ``succeeded`` and does nothing;
    ``run.outcome`` stays ``skipped``).  Any other answer changes nothing: the cycle keeps waiting
    until its deadline (:func:`worker.rules.auto_renew.awaiting_authentication`).
    """
    engine = bound_engine(session_factory)
    with engine.connect() as connection:
        intent = read_intent(connection, intent_id)
        run = ChargeRun(intent.mailbox_id)
        if answer.outcome is not ChargeOutcome.SUCCEEDED or intent.status != AWAITING_AUTHENTICATION:
            connection.rollback()
            return run
        day = ChargeDay(today=today, clock=clock, mail_domain=mail_domain, stages=stages, plan=plan, seller=seller)
        work = _Work(connection, session_factory, gateway, run, day, set())
        mailbox = lock_mailbox(connection, intent.mailbox_id, today, claimed=True)
        refused = None
        if mailbox is None:
            refused = "auto-renew was switched off meanwhile"
        elif (state := mailbox.cycles.get(intent.cycle_expires_on)) is not None and state.failed_on is not None:
            refused = "the cycle had ended in charge-failed, with its order awaiting payment"
        if refused is not None:
            # Authenticated too late for this charge (on a gateway's page left open): the money goes back.
            work.refund_authenticated(intent_id, answer, refused)
            connection.commit()
            return _settle_refunds(session_factory, gateway, run, day)
        work.record(mailbox, intent_id, answer, statement=_RECORD_AUTHENTICATED)
        mailbox.write(connection)
        if run.outcome == "succeeded":
            invoices.number_pending_invoices(connection)
        connection.commit()
    return _settle_refunds(session_factory, gateway, run, day)


def _settle_refunds(
    session_factory: sessionmaker[Session], gateway: PaymentGateway, run: ChargeRun, day: ChargeDay
) -> ChargeRun:
    """Ask for the refunds ``run`` started, once they are committed."""
    for refund_id in run.refund_ids:
        try:
            with session_factory() as session:
                settle_refund(
                    session,
                    gateway,
                    refund_id,
                    now=day.clock(),
                    today=day.today,
                    settings=None,
                    charge_email=functools.partial(queue_charge_refund_email, mail_domain=day.mail_domain),
                )
        except Exception as error:  # recorded and started: `payments refunds-retry` asks again with its key
            log.error("refund %s of mailbox %s left open: %s", refund_id, run.mailbox_id, type(error).__name__)
    return run


def bound_engine(session_factory: sessionmaker[Session]) -> Engine:
    """The engine the factory's sessions use: the charge work runs its statements on its
    connections, and opens an ORM session on the same connection only to fail a cycle."""
    with session_factory() as session:
        bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


class _Work(CycleWrites):
    """One transaction of one mailbox's charge work, on ``connection``: lock the mailbox,
    record the answer of the last gateway call, and claim the next call, if any (the caller
    commits before making it).  What the answer and the rule's decisions write besides the
    intent is in :class:`~worker.services.charges.outcomes.CycleWrites`."""

    def __init__(
        self,
        connection: Connection,
        session_factory: sessionmaker[Session],
        gateway: PaymentGateway,
        run: ChargeRun,
        day: ChargeDay,
        looked_up: set[int],
    ) -> None:
        super().__init__(connection, session_factory, run, day)
        self.gateway = gateway
        #: The intents this run looked up already: one still unknown is asked again tomorrow.
        self.looked_up = looked_up

    def round(self, mailbox_id: int, answered: tuple[int, ChargeResult] | None) -> Claim | None:
        mailbox = lock_mailbox(self.connection, mailbox_id, self.day.today, claimed=answered is not None)
        if mailbox is None:
            return None  # not due, or claimed elsewhere (or no longer auto-renew)
        self.now = self.day.clock()
        if answered is not None:
            self.record(mailbox, *answered)
        claim = self.next_work(mailbox)
        mailbox.write(self.connection)
        return claim

    def next_work(self, mailbox: LockedMailbox) -> Claim | None:
        """Follow the rule until the mailbox is left for a later day or a gateway call is claimed."""
        day = self.day
        for _step in range(MAX_ROUNDS):
            state = mailbox.state
            decision = decide_for(mailbox, state, day.stages, day.today, day.plan)
            if decision.charge == FAIL:
                self.fail(mailbox, state)
                continue
            if decision.charge is None:
                mailbox.next_action_on = next_action_on(decision, mailbox.next_action_on, day.today)
                if self.run.outcome == "skipped":
                    self.run.outcome = "retry" if decision.skip_reason == "retry-scheduled" else "idle"
                return None
            if decision.charge == RECONCILE:
                return self.claim_lookup(mailbox, read_intent(self.connection, last_intent_id(state)))
            if decision.charge == CHARGE and (
                order := pending_manual_order(self.connection, mailbox.id, mailbox.expires_on)
            ):
                self.skip_for_order(mailbox, state, order)
                return None
            assert decision.attempt is not None
            return self.claim_charge(mailbox, decision.attempt)
        return None

    def claim_charge(self, mailbox: LockedMailbox, attempt: int) -> Claim:
        price = charge_price(mailbox.row, plan=self.day.plan)
        intent = {
            "mailbox_id": mailbox.id,
            "cycle_expires_on": mailbox.expires_on,
            "attempt": attempt,
            "idempotency_key": idempotency_key(mailbox.id, mailbox.expires_on, attempt),
            "amount_cents": price.total_cents,
            "currency": CURRENCY,
            "payment_method": mailbox.payment_method,
            "years": price.years,
            "status": ChargeStatus.STARTED.value,
            "business_date": self.day.today,
            "created_at": self.now,
        }
        intent_id: int = self.connection.execute(_CLAIM, intent).scalar_one()
        # Still due today: the new started intent is the claim, and if this process dies before
        # recording the answer, a run after the claim's minutes looks it up.
        mailbox.next_action_on = self.day.today
        return intent_id, charge_call(self.gateway, charge_parameters(**intent), self.run)

    def claim_lookup(self, mailbox: LockedMailbox, intent: Any) -> Claim | None:
        today = self.day.today
        if intent.id in self.looked_up:
            self.run.outcome = "unknown"  # still unresolved: tomorrow's run asks again
            return None
        if intent.status == ChargeStatus.STARTED.value and self.day.plan.in_flight(intent.created_at, self.now):
            return None  # another process's charge, awaiting its answer: its claim (run.outcome "skipped")
        self.looked_up.add(intent.id)
        # The lookup's claim: no other run takes the mailbox today.
        mailbox.next_action_on = today + timedelta(days=1)
        return intent.id, reconcile_call(self.gateway, intent, today, mailbox.expires_on, self.run)

    def record(self, mailbox: LockedMailbox, intent_id: int, answer: ChargeResult, *, statement: Any = _RECORD) -> None:
        """Record the gateway's answer; on success move the expiry and write the receipt; when the
        holder must authenticate, the email that leads to it."""
        intent = self.connection.execute(
            statement,
            {
                "intent_id": intent_id,
                "answer_status": answer.outcome.value,
                "answer_reference": answer.reference or None,
                "answer_decline_code": answer.decline_code,
                "answer_resolved_at": None if answer.outcome is ChargeOutcome.UNKNOWN else self.now,
            },
        ).first()
        if intent is None:
            return  # resolved meanwhile (by a lookup of another run): its answer was recorded
        mailbox.set_status(intent)
        log.info(
            "charge %s for mailbox %s (%s): %s",
            intent.idempotency_key,
            mailbox.id,
            mask_token(intent.payment_method),
            answer.outcome.value,
        )
        if answer.outcome is ChargeOutcome.REQUIRES_AUTHENTICATION and statement is _RECORD:
            self.ask_authentication(mailbox, intent)
            return
        if answer.outcome is not ChargeOutcome.SUCCEEDED:
            return
        if mailbox.expires_on != intent.cycle_expires_on:
            # The cycle was renewed another way (a registered manual payment) while this
            # charge was unresolved: the money moved, the expiry is not moved twice.
            # The money goes back: the refund's intent is written in this transaction and asked
            # for once it is committed (charge_mailbox); refunds-retry asks again if that is lost.
            with self.session_factory(bind=self.connection) as session:  # in this transaction
                refund_id = start_refund(
                    session,
                    gateway=self.gateway.name,
                    order=None,
                    payment_reference=intent.reference or intent.idempotency_key,
                    amount_cents=intent.amount_cents,
                    currency=intent.currency,
                    kind=AUTOMATIC,
                    reason="the mailbox was renewed meanwhile",
                    now=self.now,
                ).id
            log.warning(
                "charge %s succeeded but mailbox %s was already renewed (expiry %s): refunded automatically",
                intent.idempotency_key,
                mailbox.id,
                mailbox.expires_on,
            )
            self.run.refund_ids.append(refund_id)
            self.run.outcome = "succeeded-already-renewed"
            return
        self.renew(mailbox, intent)

    def refund_authenticated(self, intent_id: int, answer: ChargeResult, reason: str) -> None:
        """A charge authenticated too late (auto-renew switched off, the cycle failed): recorded, and refunded
        (the refund's intent in this transaction, asked for after the commit)."""
        intent = self.connection.execute(
            _RECORD_AUTHENTICATED,
            {
                "intent_id": intent_id,
                "answer_status": answer.outcome.value,
                "answer_reference": answer.reference or None,
                "answer_decline_code": answer.decline_code,
                "answer_resolved_at": self.now,
            },
        ).first()
        if intent is None:
            return
        with self.session_factory(bind=self.connection) as session:  # in this transaction
            refund_id = start_refund(
                session,
                gateway=self.gateway.name,
                order=None,
                payment_reference=intent.reference or intent.idempotency_key,
                amount_cents=intent.amount_cents,
                currency=intent.currency,
                kind=AUTOMATIC,
                reason=reason,
                now=self.now,
            ).id
        log.warning("charge %s authenticated too late (%s): refunded", intent.idempotency_key, reason)
        self.run.refund_ids.append(refund_id)
        self.run.outcome = "succeeded-refunded"
