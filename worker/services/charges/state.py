"""The state of an auto-renew cycle, from the database: its ledger rows and its charge attempts.

Two reads give the rule (:func:`worker.rules.auto_renew.decide_auto_renew`) the same
:class:`CycleState`: :func:`load_cycle_states`, the current cycle of many mailboxes at
once (the scan and the report), and :func:`lock_mailbox`, one mailbox locked for its
charge work with its current and later cycles, in one statement.  Both are SQLAlchemy
Core selects.  The charge service reads a whole intent row (:func:`read_intent`) only
when it needs one: to look a charge up, or to say why a cycle failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Protocol

from sqlalchemy import Connection, Row, and_, bindparam, select, tuple_, update
from sqlalchemy.orm import Session

from worker.rules.auto_renew import (
    CHARGE_FAILED,
    DEFAULT_CHARGE_PLAN,
    AttemptRecord,
    AutoRenewDecision,
    ChargePlan,
    decide_auto_renew,
)
from worker.rules.schedule import Stage
from worker.store.models import ChargeIntent, Holder, Mailbox, MailboxSchedule, NoticeLedgerEntry

_MAILBOXES = Mailbox.__table__
_SCHEDULE = MailboxSchedule.__table__
_HOLDERS = Holder.__table__
_LEDGER = NoticeLedgerEntry.__table__
_INTENTS = ChargeIntent.__table__

#: A whole charge intent row, as the charge service reads and writes it.
INTENT_COLUMNS = tuple(_INTENTS.c)


@dataclass
class CycleState:
    """One expiry cycle of one mailbox: the (stage, kind) pairs in its ledger, the business
    date of its charge-failed email, and its charge attempts, in attempt order."""

    sent: frozenset[tuple[str, str]]
    failed_on: date | None
    intents: list[AttemptRecord]

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        return tuple(self.intents)

    def holds_stage(self, stage: Stage) -> bool:
        return any(name == stage.name for name, _kind in self.sent)

    def add_email(self, stage: Stage, kind: str, business_date: date) -> None:
        """What an email written in this transaction adds to the cycle's ledger."""
        self.sent = self.sent | {(stage.name, kind)}
        if kind == CHARGE_FAILED:
            self.failed_on = business_date

    def set_status(self, intent_id: int, status: str) -> None:
        """An attempt's status as this transaction recorded it."""
        self.intents = [replace(a, status=status) if a.intent_id == intent_id else a for a in self.intents]


class _States:
    """CycleStates built from ledger rows and attempts, by a key (a mailbox id, or a cycle)."""

    def __init__(self) -> None:
        self.sent: dict[Any, set[tuple[str, str]]] = {}
        self.failed_on: dict[Any, date] = {}
        self.attempts: dict[Any, dict[int, AttemptRecord]] = {}

    def ledger(self, key: Any, stage: str, kind: str, business_date: date) -> None:
        self.sent.setdefault(key, set()).add((stage, kind))
        if kind == CHARGE_FAILED:
            self.failed_on[key] = business_date

    def attempt(self, key: Any, intent_id: int, attempt: int, status: str, business_date: date) -> None:
        self.attempts.setdefault(key, {})[intent_id] = AttemptRecord(attempt, status, business_date, intent_id)

    def states(self) -> dict[Any, CycleState]:
        return {
            key: CycleState(
                frozenset(self.sent.get(key, ())),
                self.failed_on.get(key),
                sorted(self.attempts.get(key, {}).values(), key=lambda record: record.attempt),
            )
            for key in self.sent.keys() | self.attempts.keys()
        }


def load_cycle_states(session: Session, mailboxes: Iterable[Any]) -> dict[int, CycleState]:
    """The ledger and the charge attempts of each mailbox's current cycle (two queries)."""
    keys = [(mailbox.id, mailbox.expires_on) for mailbox in mailboxes]
    states = {mailbox_id: CycleState(frozenset(), None, []) for mailbox_id, _ in keys}
    if not keys:
        return states
    built = _States()
    for row in session.execute(
        select(_LEDGER.c.mailbox_id, _LEDGER.c.stage, _LEDGER.c.kind, _LEDGER.c.business_date).where(
            tuple_(_LEDGER.c.mailbox_id, _LEDGER.c.cycle_expires_on).in_(keys)
        )
    ):
        built.ledger(row.mailbox_id, row.stage, row.kind, row.business_date)
    for row in session.execute(
        select(
            _INTENTS.c.mailbox_id, _INTENTS.c.id, _INTENTS.c.attempt, _INTENTS.c.status, _INTENTS.c.business_date
        ).where(tuple_(_INTENTS.c.mailbox_id, _INTENTS.c.cycle_expires_on).in_(keys))
    ):
        built.attempt(row.mailbox_id, row.id, row.attempt, row.status, row.business_date)
    states.update(built.states())
    return states


class RuleFacts(Protocol):
    """What the rule reads of a mailbox."""

    @property
    def expires_on(self) -> date: ...
    @property
    def card_expires_on(self) -> date | None: ...
    @property
    def payment_method(self) -> str | None: ...
    @property
    def next_action_on(self) -> date | None: ...


def decide_for(
    mailbox: RuleFacts,
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


def is_auto_renew(mailbox: Any) -> bool:
    return bool(mailbox.auto_renew) and mailbox.domain_id is None


# -- One mailbox, locked for its charge work ---------------------------------------------------

#: The mailbox with what the rule and the emails read of it, and the ledger rows and charge
#: attempts of its current cycle and of any later one, outer-joined: one row per (ledger row,
#: attempt) pair, at least one.  A cycle holds a few of each.  The holder's invoicing data come
#: with it, for a successful charge's invoice.
#: The holder's columns an invoice reads (beside its name), selected as ``holder_{name}``.
HOLDER_INVOICE_COLUMNS = (
    "kind",
    "tax_code",
    "vat_number",
    "sdi_code",
    "einvoice_pec",
    "office_code",
    "cig",
    "cup",
    "billing_address",
    "billing_postcode",
    "billing_city",
    "billing_province",
    "billing_country",
)
_LOCK = (
    select(
        _MAILBOXES.c.id,
        _MAILBOXES.c.address,
        _MAILBOXES.c.plan,
        _MAILBOXES.c.extra_space_gb,
        _MAILBOXES.c.extra_archive_gb,
        _MAILBOXES.c.renewal_years,
        _MAILBOXES.c.expires_on,
        _SCHEDULE.c.next_action_on,
        _MAILBOXES.c.payment_method,
        _MAILBOXES.c.card_expires_on,
        _MAILBOXES.c.language,
        _MAILBOXES.c.reference_email,
        _HOLDERS.c.name.label("holder_name"),
        *(_HOLDERS.c[name].label(f"holder_{name}") for name in HOLDER_INVOICE_COLUMNS),
        _LEDGER.c.cycle_expires_on.label("ledger_cycle"),
        _LEDGER.c.stage.label("ledger_stage"),
        _LEDGER.c.kind.label("ledger_kind"),
        _LEDGER.c.business_date.label("ledger_business_date"),
        _INTENTS.c.id.label("intent_id"),
        _INTENTS.c.cycle_expires_on.label("intent_cycle"),
        _INTENTS.c.attempt.label("intent_attempt"),
        _INTENTS.c.status.label("intent_status"),
        _INTENTS.c.business_date.label("intent_business_date"),
    )
    .select_from(
        _MAILBOXES.join(_SCHEDULE, _SCHEDULE.c.mailbox_id == _MAILBOXES.c.id)
        .join(_HOLDERS, _HOLDERS.c.id == _MAILBOXES.c.holder_id)
        .outerjoin(
            _LEDGER,
            and_(_LEDGER.c.mailbox_id == _MAILBOXES.c.id, _LEDGER.c.cycle_expires_on >= _MAILBOXES.c.expires_on),
        )
        .outerjoin(
            _INTENTS,
            and_(_INTENTS.c.mailbox_id == _MAILBOXES.c.id, _INTENTS.c.cycle_expires_on >= _MAILBOXES.c.expires_on),
        )
    )
    .where(
        _MAILBOXES.c.id == bindparam("mailbox_id"),
        _MAILBOXES.c.auto_renew.is_(True),
        _MAILBOXES.c.domain_id.is_(None),
    )
)
#: A mailbox still due today, unless another transaction holds it (that one is doing its work).
#: Its row and its schedule's are locked, in that order, as a registered payment locks them
#: (the mailbox, then the schedule it moves): the notice batch locks the schedule alone.
_LOCK_DUE = _LOCK.where(_SCHEDULE.c.next_action_on <= bindparam("today")).with_for_update(
    of=(_MAILBOXES, _SCHEDULE), skip_locked=True
)
#: A mailbox this caller claimed (its intent is committed): waits for its lock.
_LOCK_CLAIMED = _LOCK.with_for_update(of=(_MAILBOXES, _SCHEDULE))
_INTENT = select(*INTENT_COLUMNS).where(_INTENTS.c.id == bindparam("intent_id"))
_RENEW = (
    update(_MAILBOXES).where(_MAILBOXES.c.id == bindparam("the_mailbox")).values(expires_on=bindparam("new_expires_on"))
)
_MOVE = (
    update(_SCHEDULE)
    .where(_SCHEDULE.c.mailbox_id == bindparam("the_mailbox"))
    .values(next_action_on=bindparam("new_next_action_on"))
)


@dataclass
class LockedMailbox:
    """A mailbox locked by the caller's transaction: what the rule and the emails read of it
    (``row``), the state of its current and later cycles, and its ``expires_on`` and
    ``next_action_on`` as the charge work sets them, written by :meth:`write`."""

    row: Row[Any]
    cycles: dict[date, CycleState]
    expires_on: date
    next_action_on: date | None
    _stored: tuple[date, date | None] = field(init=False)

    def __post_init__(self) -> None:
        self._stored = (self.expires_on, self.next_action_on)

    @property
    def id(self) -> int:
        mailbox_id: int = self.row.id
        return mailbox_id

    @property
    def card_expires_on(self) -> date | None:
        card: date | None = self.row.card_expires_on
        return card

    @property
    def payment_method(self) -> str | None:
        method: str | None = self.row.payment_method
        return method

    @property
    def state(self) -> CycleState:
        """The current cycle's state."""
        return self.cycles.setdefault(self.expires_on, CycleState(frozenset(), None, []))

    def set_status(self, intent: Any) -> None:
        """An intent's status as this transaction recorded it (``intent``: its row)."""
        state = self.cycles.get(intent.cycle_expires_on)
        if state is not None:
            state.set_status(intent.id, intent.status)

    def write(self, connection: Connection) -> None:
        """Write ``expires_on`` (on the mailbox) and ``next_action_on`` (on its schedule), each if it changed."""
        if self.expires_on != self._stored[0]:
            connection.execute(_RENEW, {"the_mailbox": self.id, "new_expires_on": self.expires_on})
        if self.next_action_on != self._stored[1]:
            connection.execute(_MOVE, {"the_mailbox": self.id, "new_next_action_on": self.next_action_on})
        self._stored = (self.expires_on, self.next_action_on)


def lock_mailbox(connection: Connection, mailbox_id: int, today: date, *, claimed: bool) -> LockedMailbox | None:
    """Lock an auto-renew mailbox for its charge work (``FOR UPDATE``; SQLite's transactions
    are serial), with its cycles: the caller's claimed one, or else one still due ``today``
    that no other transaction holds (``SKIP LOCKED``).  None when there is no such mailbox."""
    if claimed:
        rows = connection.execute(_LOCK_CLAIMED, {"mailbox_id": mailbox_id}).all()
    else:
        rows = connection.execute(_LOCK_DUE, {"mailbox_id": mailbox_id, "today": today}).all()
    if not rows:
        return None
    built = _States()
    for row in rows:
        if row.ledger_stage is not None:
            built.ledger(row.ledger_cycle, row.ledger_stage, row.ledger_kind, row.ledger_business_date)
        if row.intent_id is not None:
            built.attempt(
                row.intent_cycle, row.intent_id, row.intent_attempt, row.intent_status, row.intent_business_date
            )
    first = rows[0]
    return LockedMailbox(first, built.states(), first.expires_on, first.next_action_on)


def read_intent(connection: Connection, intent_id: int) -> Any:
    """A whole charge intent row (``INTENT_COLUMNS``)."""
    return connection.execute(_INTENT, {"intent_id": intent_id}).one()


__all__: Sequence[str] = [
    "CycleState",
    "INTENT_COLUMNS",
    "LockedMailbox",
    "decide_for",
    "is_auto_renew",
    "load_cycle_states",
    "lock_mailbox",
    "read_intent",
]
