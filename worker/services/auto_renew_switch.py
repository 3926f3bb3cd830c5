"""The holder's auto-renew switch: read the state, switch it off or on, replace the payment method.

The page of ``/rinnovo-automatico/<token>`` reads with :func:`read_auto_renew` (one
transaction that writes nothing).  Each change is one transaction that first locks the
mailbox row, the lock the charge service takes for its claim and its record
(:func:`worker.services.charges.lock_mailbox`): a switch and a charge of the same
mailbox are decided one after the other, never both on the same facts.

- Switched off before the cycle's charge is claimed: the charge service no longer finds
  the mailbox (it locks only auto-renew mailboxes), and the manual schedule takes over
  from today's stage, or the next one (:func:`worker.rules.auto_renew.manual_action_on`).
- Switched off while a charge is in flight (its intent ``started`` or ``unknown``): the
  charge wins; the holder is told so, and that its result comes by email.
- Switched off after the charge moved the expiry on (the page was opened before it): the
  charge won; the holder is told the new expiry, and auto-renew stays on for the next one.

Switching back on needs a stored method and comes before the cycle's first charge date
(:func:`worker.rules.auto_renew.can_switch_on`).  A new method comes from the gateway's
hosted page (:class:`worker.gateways.MethodSetup`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.gateways import SavedMethod, describe_payment_method
from worker.rules import schedule
from worker.rules.auto_renew import (
    AWAITING_AUTHENTICATION,
    CHARGE_FAILED,
    DEFAULT_CHARGE_PLAN,
    UNRESOLVED,
    AttemptRecord,
    ChargePlan,
    can_switch_on,
    first_auto_renew_action_on,
    manual_action_on,
    next_charge_on,
)
from worker.rules.schedule import Stage
from worker.services.charges import charge_price
from worker.services.orders.link import holder_language
from worker.services.platform_events import auto_renew_switched
from worker.services.runtime import utc_now
from worker.store.models import ChargeIntent, Holder, Mailbox, MailboxSchedule, NoticeLedgerEntry
from worker.store.schedule import move_schedule

_MAILBOXES = Mailbox.__table__
_SCHEDULE = MailboxSchedule.__table__
_HOLDERS = Holder.__table__
_INTENTS = ChargeIntent.__table__
_LEDGER = NoticeLedgerEntry.__table__


class PageState(StrEnum):
    """What the auto-renew page says about a mailbox."""

    ON = "on"
    OFF = "off"
    #: A charge of the current cycle is in flight: nothing changes until its answer is recorded.
    CHARGING = "charging"
    #: The cycle's charge failed for good: an unpaid order; the cycle is renewed by hand.
    FAILED = "failed"
    ON_DOMAIN = "on_domain"
    DELETED = "deleted"
    NOT_FOUND = "not_found"


class Outcome(StrEnum):
    """What a POST did, for the page to tell the holder."""

    SWITCHED_OFF = "switched_off"
    ALREADY_OFF = "already_off"
    #: The charge holds the cycle: the switch was not applied.
    CHARGE_RUNNING = "charge_running"
    #: The expiry moved on since the page was read (the charge won, or a renewal was paid).
    RENEWED = "renewed"
    SWITCHED_ON = "switched_on"
    ALREADY_ON = "already_on"
    NO_METHOD = "no_method"
    TOO_LATE = "too_late"
    METHOD_SAVED = "method_saved"
    METHOD_REFUSED = "method_refused"
    #: A mailbox on a customer domain, deleted, or gone: nothing to switch.
    NOT_ALLOWED = "not_allowed"


@dataclass(frozen=True)
class AutoRenewPage:
    """What GET /rinnovo-automatico/<token> shows.  Built without writing anything."""

    state: PageState
    language: str
    mailbox_id: int = 0
    address: str = ""
    holder_name: str | None = None
    expires_on: date | None = None
    deletion_on: date | None = None
    #: The next charge's date and amount (VAT included, but under split payment), while auto-renew is on.
    next_charge_on: date | None = None
    amount_cents: int | None = None
    #: The amount is the taxable one: a public administration under split payment pays the VAT itself.
    split_payment: bool = False
    years: int = 1
    #: The stored method, masked (``Visa •••• 4242``); None when there is none.
    method: str | None = None
    can_switch_on: bool = False
    #: The cycle's charge waiting for the holder's authentication (its intent's id), while on.
    authentication_intent_id: int | None = None


@dataclass(frozen=True)
class SwitchResult:
    outcome: Outcome
    #: The mailbox's expiry after the transaction (the new one for ``renewed``).
    expires_on: date | None = None


_FACTS = (
    select(
        _MAILBOXES.c.id,
        _MAILBOXES.c.address,
        _MAILBOXES.c.plan,
        _MAILBOXES.c.extra_space_gb,
        _MAILBOXES.c.extra_archive_gb,
        _MAILBOXES.c.renewal_years,
        _MAILBOXES.c.expires_on,
        _SCHEDULE.c.next_action_on,
        _MAILBOXES.c.domain_id,
        _MAILBOXES.c.auto_renew,
        _MAILBOXES.c.payment_method,
        _MAILBOXES.c.card_expires_on,
        _MAILBOXES.c.language,
        _HOLDERS.c.name.label("holder_name"),
        _HOLDERS.c.kind.label("holder_kind"),
    )
    .join(_SCHEDULE, _SCHEDULE.c.mailbox_id == _MAILBOXES.c.id)
    .join(_HOLDERS, _HOLDERS.c.id == _MAILBOXES.c.holder_id)
    .where(_MAILBOXES.c.id == bindparam("mailbox_id"))
)
#: The charge service's lock (FOR UPDATE of the mailbox row, then its schedule row; SQLite's
#: transactions are serial).
_LOCKED_FACTS = _FACTS.with_for_update(of=(_MAILBOXES, _SCHEDULE))
_ATTEMPTS = (
    select(_INTENTS.c.id, _INTENTS.c.attempt, _INTENTS.c.status, _INTENTS.c.business_date)
    .where(_INTENTS.c.mailbox_id == bindparam("mailbox_id"), _INTENTS.c.cycle_expires_on == bindparam("cycle"))
    .order_by(_INTENTS.c.attempt)
)
_FAILED = select(_LEDGER.c.id).where(
    _LEDGER.c.mailbox_id == bindparam("mailbox_id"),
    _LEDGER.c.cycle_expires_on == bindparam("cycle"),
    _LEDGER.c.kind == CHARGE_FAILED,
)
_SET_AUTO_RENEW = (
    update(_MAILBOXES).where(_MAILBOXES.c.id == bindparam("mailbox_id")).values(auto_renew=bindparam("new_auto_renew"))
)
_SET_METHOD = (
    update(_MAILBOXES)
    .where(_MAILBOXES.c.id == bindparam("mailbox_id"))
    .values(payment_method=bindparam("new_payment_method"), card_expires_on=bindparam("new_card_expires_on"))
)


@dataclass(frozen=True)
class _Cycle:
    """The current cycle as the switch reads it: its charge attempts and whether it failed."""

    attempts: tuple[AttemptRecord, ...]
    failed: bool

    @property
    def charging(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].status in UNRESOLVED


def _cycle(connection: Connection | Session, mailbox: Any) -> _Cycle:
    keys = {"mailbox_id": mailbox.id, "cycle": mailbox.expires_on}
    attempts = tuple(
        AttemptRecord(row.attempt, row.status, row.business_date, row.id) for row in connection.execute(_ATTEMPTS, keys)
    )
    failed = connection.execute(_FAILED, keys).first() is not None
    return _Cycle(attempts, failed)


def _closed_state(mailbox: Any, today: date) -> PageState | None:
    """The states in which there is nothing to switch."""
    if mailbox is None:
        return PageState.NOT_FOUND
    if mailbox.domain_id is not None:
        return PageState.ON_DOMAIN
    if schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
        return PageState.DELETED
    return None


def _switch(
    session: Session, mailbox: Any, auto_renew: bool, next_action_on: date | None, *, now: datetime, today: date
) -> None:
    """Set the flag, and the date the scan next looks at the mailbox, as the scan sets it
    (:func:`worker.store.schedule.move_schedule`, the notice batch's own write of the schedule); the
    platform hears of it (``auto_renew.changed``, source ``holder``)."""
    mailbox_id = mailbox.id
    session.execute(_SET_AUTO_RENEW, {"mailbox_id": mailbox_id, "new_auto_renew": auto_renew})
    auto_renew_switched(session, mailbox_id, mailbox.address, auto_renew, source="holder", now=now, today=today)
    move_schedule(session, [(mailbox_id, next_action_on)])


def read_auto_renew(
    session: Session | Connection, mailbox_id: int, today: date, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> AutoRenewPage:
    """The page's facts about one mailbox: its state, the next charge's date and amount, the masked
    method.  Three SELECTs; writes nothing."""
    mailbox = session.execute(_FACTS, {"mailbox_id": mailbox_id}).first()
    closed = _closed_state(mailbox, today)
    if mailbox is None:
        return AutoRenewPage(state=PageState.NOT_FOUND, language=holder_language(None))
    language = holder_language(mailbox.language)
    price = charge_price(mailbox, plan=plan)
    cycle = _cycle(session, mailbox)
    state = closed
    if state is None:
        if not mailbox.auto_renew:
            state = PageState.OFF
        elif cycle.charging:
            state = PageState.CHARGING
        elif cycle.failed:
            state = PageState.FAILED
        else:
            state = PageState.ON
    return AutoRenewPage(
        state=state,
        language=language,
        mailbox_id=mailbox.id,
        address=mailbox.address,
        holder_name=mailbox.holder_name,
        expires_on=mailbox.expires_on,
        deletion_on=schedule.deletion_date(mailbox.expires_on),
        next_charge_on=next_charge_on(mailbox.expires_on, cycle.attempts, today, plan)
        if state is PageState.ON
        else None,
        amount_cents=price.total_cents,
        split_payment=price.split_payment,
        years=price.years,
        method=describe_payment_method(mailbox.payment_method, language) if mailbox.payment_method else None,
        can_switch_on=state is PageState.OFF
        and bool(mailbox.payment_method)
        and can_switch_on(mailbox.expires_on, today, plan)
        and not cycle.failed,
        authentication_intent_id=cycle.attempts[-1].intent_id
        if state is PageState.ON and cycle.attempts and cycle.attempts[-1].status == AWAITING_AUTHENTICATION
        else None,
    )


def switch_off(
    session_factory: sessionmaker[Session],
    mailbox_id: int,
    *,
    seen_expires_on: date | None,
    today: date,
    stages: tuple[Stage, ...],
    clock: Callable[[], datetime] = utc_now,
) -> SwitchResult:
    """Switch auto-renew off, under the charge's lock.  ``seen_expires_on``: the expiry the page
    showed when the holder chose (None: not known, the current one).

    No charge of the cycle follows; the manual schedule takes over (today's stage, else the
    next one).  A charge in flight, or a renewal that moved the expiry since the page was
    read, wins: nothing changes and the outcome says which.
    """
    with session_factory() as session, session.begin():
        mailbox = session.execute(_LOCKED_FACTS, {"mailbox_id": mailbox_id}).first()
        if _closed_state(mailbox, today) is not None:
            return SwitchResult(Outcome.NOT_ALLOWED)
        if seen_expires_on is not None and mailbox.expires_on > seen_expires_on:
            return SwitchResult(Outcome.RENEWED, mailbox.expires_on)
        if not mailbox.auto_renew:
            return SwitchResult(Outcome.ALREADY_OFF, mailbox.expires_on)
        if _cycle(session, mailbox).charging:
            return SwitchResult(Outcome.CHARGE_RUNNING, mailbox.expires_on)
        _switch(session, mailbox, False, manual_action_on(stages, mailbox.expires_on, today), now=clock(), today=today)
        return SwitchResult(Outcome.SWITCHED_OFF, mailbox.expires_on)


def switch_on(
    session_factory: sessionmaker[Session],
    mailbox_id: int,
    *,
    today: date,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    clock: Callable[[], datetime] = utc_now,
) -> SwitchResult:
    """Switch auto-renew back on, under the charge's lock: only with a stored method, and only
    before the cycle's first charge date (and not in a cycle whose charge failed).  The scan
    then follows the auto-renew rule: the charge notice (if the cycle has not had it), the charge."""
    with session_factory() as session, session.begin():
        mailbox = session.execute(_LOCKED_FACTS, {"mailbox_id": mailbox_id}).first()
        if _closed_state(mailbox, today) is not None:
            return SwitchResult(Outcome.NOT_ALLOWED)
        if mailbox.auto_renew:
            return SwitchResult(Outcome.ALREADY_ON, mailbox.expires_on)
        if not mailbox.payment_method:
            return SwitchResult(Outcome.NO_METHOD, mailbox.expires_on)
        if not can_switch_on(mailbox.expires_on, today, plan) or _cycle(session, mailbox).failed:
            return SwitchResult(Outcome.TOO_LATE, mailbox.expires_on)
        first = first_auto_renew_action_on(mailbox.expires_on, mailbox.card_expires_on, plan)
        _switch(session, mailbox, True, max(first, today), now=clock(), today=today)
        return SwitchResult(Outcome.SWITCHED_ON, mailbox.expires_on)


def replace_method(
    session_factory: sessionmaker[Session], mailbox_id: int, saved: SavedMethod | None, *, today: date
) -> SwitchResult:
    """Store the method the gateway's hosted page saved (None: the page refused it), under the
    charge's lock.  A charge in flight keeps the method of its intent; the next attempt uses this one."""
    if saved is None:
        return SwitchResult(Outcome.METHOD_REFUSED)
    with session_factory() as session, session.begin():
        mailbox = session.execute(_LOCKED_FACTS, {"mailbox_id": mailbox_id}).first()
        if _closed_state(mailbox, today) is not None:
            return SwitchResult(Outcome.NOT_ALLOWED)
        session.execute(
            _SET_METHOD,
            {
                "mailbox_id": mailbox_id,
                "new_payment_method": saved.token,
                "new_card_expires_on": saved.card_expires_on,
            },
        )
        return SwitchResult(Outcome.METHOD_SAVED, mailbox.expires_on)
