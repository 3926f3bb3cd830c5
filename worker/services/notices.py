"""The daily notice scan: which mailboxes are due, and the ledger and outbox rows for them.

The scan reads only mailboxes whose ``next_action_on`` has come (the indexed
date of their row in ``mailbox_schedule``), so its cost follows the work that
is due, not the size of the fleet.  Each batch is handled in one transaction:
the mailboxes' schedule rows are locked, the due
stage is decided by a pure rule (:mod:`worker.rules.notices`, and
:mod:`worker.services.charges` for auto-renew), the ledger rows and their
outbox messages are written together, and ``next_action_on`` moves to the next
stage.  The ledger's unique key (mailbox, expiry cycle, stage) makes a second
run, or a second process, write nothing more.

The writes are three SQLAlchemy Core statements whatever the batch's size: the
outbox messages (``INSERT … RETURNING``), their ledger rows, and the mailboxes'
next dates in ``mailbox_schedule`` (:func:`worker.store.db.insert_many` and
``update_by_id``).  A batch writes no ``mailboxes`` row, nor locks one: the wide
row and its six indexes stay out of the day's churn.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Row, select
from sqlalchemy.orm import Session, sessionmaker

from worker.mail.queue import NewEmail, queue_emails
from worker.rules import schedule
from worker.rules.notices import NoticeDecision, decide_notice, earliest_action_on, without_opted_out_reminder
from worker.rules.schedule import Stage
from worker.services import charges, orders
from worker.store.db import insert_many, one_of
from worker.store.models import Domain, Holder, Mailbox, MailboxSchedule, NoticeLedgerEntry, WorkerState
from worker.store.schedule import move_schedule

_MAILBOXES = Mailbox.__table__
_SCHEDULE = MailboxSchedule.__table__
_LEDGER = NoticeLedgerEntry.__table__
#: The manual notices: they mention a mailbox's order awaiting payment (how to pay, change or cancel it).
_NOTICE_KINDS = ("expiry-notice", "expired-notice")


@dataclass
class PlannedEmail:
    to_address: str
    kind: str
    stage: str
    language: str
    mailboxes: list[str]


@dataclass
class BatchResult:
    examined: int = 0
    notices: Counter = field(default_factory=Counter)  # (kind, stage) -> mailboxes
    emails: Counter = field(default_factory=Counter)  # (kind, stage) -> emails
    skipped: Counter = field(default_factory=Counter)  # reason -> mailboxes
    superseded: int = 0
    outbox_ids: list[int] = field(default_factory=list)
    planned: list[PlannedEmail] = field(default_factory=list)
    #: Auto-renew mailboxes with charge work due (a charge, a reconciliation or a
    #: charge-failed): for the charge service, :func:`worker.services.charges.run_charges`.
    charges_due: list[int] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.examined += other.examined
        self.notices.update(other.notices)
        self.emails.update(other.emails)
        self.skipped.update(other.skipped)
        self.superseded += other.superseded
        self.outbox_ids.extend(other.outbox_ids)
        self.planned.extend(other.planned)
        self.charges_due.extend(other.charges_due)


def due_mailbox_batches(session: Session, today: date, batch_size: int) -> Iterator[list[int]]:
    """Ids of the mailboxes due by ``today``, in batches that never split a reference address.

    Every mailbox of one address is in the same batch, so each address gets
    one email per kind and stage.  A batch may exceed ``batch_size`` only by the
    mailboxes of its last address.
    """
    # The due rows are grouped by address in a dict: a sort (in Python or by the
    # database's collation) costs more than the read itself on a normal day, and
    # more the more shuffled the addresses come.  An address keeps a bare id until
    # it has a second mailbox: a list per row made the garbage collector walk the
    # fresh rows over and over, twice the cost of the grouping itself (bench/RESULTS.md).
    # Fetched whole (``all()``): iterating the result row by row took twice as long.
    rows = (
        session.connection()
        .execute(
            select(_MAILBOXES.c.reference_email, _SCHEDULE.c.mailbox_id)
            .join(_MAILBOXES, _MAILBOXES.c.id == _SCHEDULE.c.mailbox_id)
            .where(_SCHEDULE.c.next_action_on <= today)
        )
        .all()
    )
    by_address: dict[str, int | list[int]] = {}
    for address, mailbox_id in rows:
        known = by_address.get(address)
        if known is None:
            by_address[address] = mailbox_id
        elif type(known) is int:
            by_address[address] = [known, mailbox_id]
        else:
            known.append(mailbox_id)
    batch: list[int] = []
    for ids in by_address.values():
        if type(ids) is int:
            batch.append(ids)
        else:
            batch += ids
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


#: A batch's mailboxes with their next date and what the emails need of their holder and domain:
#: plain rows, not ORM objects (loading 500 mailboxes with their holders as objects cost more
#: than the rest of the batch; bench/daily_peak.py).
_BATCH_COLUMNS = (
    *_MAILBOXES.c,
    _SCHEDULE.c.next_action_on,
    Holder.name.label("holder_name"),
    Holder.kind.label("holder_kind"),
    Domain.name.label("domain_name"),
)


def _batch_mailboxes(session: Session, mailbox_ids: list[int], today: date) -> list[Row]:
    """The batch's mailboxes still due, their schedule rows locked: the lock every writer of a
    mailbox's next date takes, so the mailboxes' own rows are left untouched.

    Two statements: the lock, then the read.  A writer that changed a mailbox (a switch of
    auto-renew, a registered payment, a charge) holds its schedule row until it commits, and
    the read, a statement after the lock was granted, sees what it committed; one statement
    would have read the mailbox as it was before the wait."""
    locked = session.scalars(
        select(_SCHEDULE.c.mailbox_id)
        .where(one_of(session, _SCHEDULE.c.mailbox_id, mailbox_ids), _SCHEDULE.c.next_action_on <= today)
        .order_by(_SCHEDULE.c.mailbox_id)
        .with_for_update()
    ).all()
    if not locked:
        return []
    return session.execute(
        select(*_BATCH_COLUMNS)
        .select_from(_SCHEDULE)
        .join(_MAILBOXES, _MAILBOXES.c.id == _SCHEDULE.c.mailbox_id)
        .join(Holder, Holder.id == Mailbox.holder_id)
        .outerjoin(Domain, Domain.id == Mailbox.domain_id)
        .where(one_of(session, _SCHEDULE.c.mailbox_id, list(locked)))
        .order_by(_SCHEDULE.c.mailbox_id)
    ).all()


def load_decision_states(
    session: Session, mailboxes: list[Row]
) -> tuple[dict[int, charges.CycleState], dict[tuple[int, date], set[str]]]:
    """What :func:`decide_mailbox` needs of the database for these mailboxes (rows with the columns of
    ``mailboxes``): the cycle states of the auto-renew ones, and the stages in the ledger of the
    current cycle of the others, by ``(mailbox id, expiry)``.

    Each mailbox's ledger is read once: the auto-renew ones with their charge
    intents (charges.load_cycle_states), the others here.
    """
    auto_renew_states = charges.load_cycle_states(session, [m for m in mailboxes if charges.is_auto_renew(m)])
    manual_keys = {(m.id, m.expires_on) for m in mailboxes if m.id not in auto_renew_states}
    sent: dict[tuple[int, date], set[str]] = defaultdict(set)
    if manual_keys:
        # By mailbox id, the cycle checked here: a (mailbox, cycle) IN list let PostgreSQL
        # read every ledger row of the cycle's date, which on a peak day is the whole
        # day's ledger, once per batch (1.5 s a batch at 75,000 rows; bench/daily_peak.py).
        manual_ids = [mailbox_id for mailbox_id, _ in manual_keys]
        for mailbox_id, cycle, stage in session.execute(
            select(_LEDGER.c.mailbox_id, _LEDGER.c.cycle_expires_on, _LEDGER.c.stage).where(
                one_of(session, _LEDGER.c.mailbox_id, manual_ids)
            )
        ):
            if (mailbox_id, cycle) in manual_keys:
                sent[(mailbox_id, cycle)].add(stage)
    return auto_renew_states, sent


def decide_mailbox(
    mailbox: Row,
    auto_renew_states: dict[int, charges.CycleState],
    sent: dict[tuple[int, date], set[str]],
    *,
    stages: tuple[Stage, ...],
    today: date,
    charge_plan: charges.ChargePlan = charges.DEFAULT_CHARGE_PLAN,
) -> NoticeDecision | charges.AutoRenewDecision:
    """What is due on ``today`` for one mailbox, from the states of :func:`load_decision_states`.

    The one rule of "what is due on a day": the scan writes what it says, and
    ``pec-renewal report`` forecasts with it.  An auto-renew decision with a
    ``charge`` is work for the charge service.  A reminder whose cycle the holder
    opted out of (``reminders_opt_out_for``) is skipped as ``opted-out``.
    """
    state = auto_renew_states.get(mailbox.id)
    decision: NoticeDecision | charges.AutoRenewDecision
    if state is not None:
        decision = charges.decide_for(mailbox, state, stages, today, charge_plan)
    else:
        decision = decide_notice(
            stages=stages,
            expires_on=mailbox.expires_on,
            on_domain=mailbox.domain_id is not None,
            auto_renew=mailbox.auto_renew,
            pending_since=mailbox.next_action_on,
            today=today,
            already_sent=frozenset(sent.get((mailbox.id, mailbox.expires_on), ())),
        )
    # A reminder the holder opted out of for this cycle is a skip (the auto-renew emails are not reminders).
    return without_opted_out_reminder(
        decision, opt_out_for=mailbox.reminders_opt_out_for, expires_on=mailbox.expires_on
    )


#: One ledger row of an email: (mailbox id, cycle's expiry, stage, kind).
LedgerRow = tuple[int, date, str, str]


@dataclass
class NoticeBatch:
    """What a batch decided, before anything is written (:func:`plan_notice_batch`)."""

    today: date
    now: datetime
    mail_domain: str
    result: BatchResult
    #: The emails to queue, and the ledger rows of each (in the same order).
    emails: list[NewEmail] = field(default_factory=list)
    ledger: list[list[LedgerRow]] = field(default_factory=list)
    #: (mailbox id, its next ``next_action_on``) for every mailbox handled here.
    moves: list[tuple[int, date | None]] = field(default_factory=list)


def plan_notice_batch(
    session: Session,
    mailbox_ids: list[int],
    *,
    today: date,
    stages: tuple[Stage, ...],
    now: datetime,
    mail_domain: str,
    charge_plan: charges.ChargePlan = charges.DEFAULT_CHARGE_PLAN,
) -> NoticeBatch:
    """Lock the batch's mailboxes that are still due and decide what each gets today; writes nothing.

    Mailboxes that another run has already handled (``next_action_on`` moved
    past today) are left out.
    """
    batch = NoticeBatch(today, now, mail_domain, BatchResult())
    result = batch.result
    mailboxes = _batch_mailboxes(session, mailbox_ids, today)
    if not mailboxes:
        return batch

    auto_renew_states, sent = load_decision_states(session, mailboxes)

    # (address, kind, stage, language, mailbox id for the per-mailbox auto-renew emails or 0)
    groups: dict[tuple[str, str, str, str, int], list[Row]] = defaultdict(list)
    for mailbox in mailboxes:
        result.examined += 1
        decision = decide_mailbox(mailbox, auto_renew_states, sent, stages=stages, today=today, charge_plan=charge_plan)
        if isinstance(decision, charges.AutoRenewDecision) and decision.charge is not None:
            # Left due (next_action_on unchanged): the charge service claims it.
            result.charges_due.append(mailbox.id)
            result.skipped["charge-due"] += 1
            continue
        batch.moves.append((mailbox.id, decision.next_action_on))
        if decision.stage is None:
            result.skipped[decision.skip_reason] += 1
            continue
        result.superseded += len(decision.superseded)
        result.notices[(decision.kind, decision.stage.name)] += 1
        own = mailbox.id if decision.kind in charges.AUTO_RENEW_KINDS else 0
        key = (mailbox.reference_email.lower(), decision.kind, decision.stage.name, mailbox.language, own)
        groups[key].append(mailbox)

    # The holder's orders awaiting payment, which the manual notices mention (one query per batch).
    noticed = [(m.id, m.expires_on) for key, members in groups.items() if key[1] in _NOTICE_KINDS for m in members]
    pending = orders.pending_orders(session, noticed)
    for (to_address, kind, stage, language, own), members in sorted(groups.items()):
        members.sort(key=lambda mailbox: mailbox.address)
        holder_names = {mailbox.holder_name for mailbox in members}
        holder_kinds = {mailbox.holder_kind for mailbox in members}
        context = {
            "holder_name": holder_names.pop() if len(holder_names) == 1 else None,
            # How the email greets: "Spett.le" a company or a public body, "Gentile" a person.
            "holder_kind": holder_kinds.pop() if len(holder_kinds) == 1 else None,
            "mailboxes": [
                {
                    "id": mailbox.id,
                    # The account: a grouped notice's "Rinnova tutte" link is for mailboxes of one.
                    "account": mailbox.account_id,
                    "address": mailbox.address,
                    "expires_on": mailbox.expires_on.isoformat(),
                    "plan": mailbox.plan,
                    "domain": mailbox.domain_name,
                }
                for mailbox in members
            ],
        }
        for entry, mailbox in zip(context["mailboxes"], members, strict=True):
            if (order := pending.get((mailbox.id, mailbox.expires_on))) is not None:
                entry["pending_order"] = order
        if own:
            context["charge"] = charges.charge_context(members[0], today=today, plan=charge_plan)
        about = [(mailbox.id, mailbox.expires_on.isoformat(), stage) for mailbox in members]
        batch.emails.append(NewEmail(about, kind, stage, language, to_address, context))
        batch.ledger.append([(mailbox.id, mailbox.expires_on, stage, kind) for mailbox in members])
        result.emails[(kind, stage)] += 1
        result.planned.append(PlannedEmail(to_address, kind, stage, language, [m.address for m in members]))
    return batch


def write_notice_batch(session: Session, batch: NoticeBatch) -> list[int]:
    """Write what :func:`plan_notice_batch` decided, in the caller's transaction; returns the outbox ids.

    The outbox messages, then their ledger rows, then the mailboxes' next
    dates (their ``mailbox_schedule`` rows).  A ledger row whose (mailbox, cycle, stage) is already there (a
    second writer that decided the same notice at the same time) raises
    SQLAlchemy's ``IntegrityError``: the caller rolls the whole batch back,
    its outbox messages included.
    """
    queued = queue_emails(
        session, batch.emails, mail_domain=batch.mail_domain, business_date=batch.today, now=batch.now
    )
    if queued:
        ledger = [
            {
                "mailbox_id": mailbox_id,
                "cycle_expires_on": cycle,
                "stage": stage,
                "kind": kind,
                "outbox_message_id": email.id,
            }
            for email, rows in zip(queued, batch.ledger, strict=True)
            for mailbox_id, cycle, stage, kind in rows
        ]
        insert_many(session, _LEDGER, ledger, same={"business_date": batch.today})
    move_schedule(session, batch.moves)
    return [email.id for email in queued]


def process_notice_batch(
    session: Session,
    mailbox_ids: list[int],
    *,
    today: date,
    stages: tuple[Stage, ...],
    now: datetime,
    mail_domain: str,
    charge_plan: charges.ChargePlan = charges.DEFAULT_CHARGE_PLAN,
) -> BatchResult:
    """Write the ledger rows and outbox messages due today for these mailboxes.

    Call inside a transaction; the caller commits.  Mailboxes that another run
    has already handled (``next_action_on`` moved past today) are left alone.
    """
    batch = plan_notice_batch(
        session, mailbox_ids, today=today, stages=stages, now=now, mail_domain=mail_domain, charge_plan=charge_plan
    )
    batch.result.outbox_ids.extend(write_notice_batch(session, batch))
    return batch.result


SCHEDULE_STATE_KEY = "notice_stages"


def reconcile_schedule(
    session_factory: sessionmaker[Session], stages: tuple[Stage, ...], today: date, chunk_size: int = 10_000
) -> int | None:
    """After a change of ``NOTICE_STAGES``, bring ``next_action_on`` forward where the new schedule needs it.

    ``next_action_on`` was computed with the schedule in force at the time; a
    new, earlier stage would otherwise be missed.  Moving a date earlier is
    always safe (the scan re-decides and the ledger stops repeats), so dates
    are only ever moved earlier here.  Returns the number of mailboxes moved,
    or None when the schedule is the one already recorded.
    """
    fingerprint = ",".join(stage.name for stage in stages)
    with session_factory() as session:
        state = session.get(WorkerState, SCHEDULE_STATE_KEY)
        if state is not None and state.value == fingerprint:
            return None
    moved = 0
    last_id = 0
    oldest_renewable = today - timedelta(days=schedule.RENEWABLE_DAYS_AFTER_EXPIRY)
    while True:
        with session_factory() as session, session.begin():
            rows = session.execute(
                select(Mailbox.id, Mailbox.expires_on, MailboxSchedule.next_action_on)
                .join(MailboxSchedule, MailboxSchedule.mailbox_id == Mailbox.id)
                .where(Mailbox.id > last_id, Mailbox.expires_on >= oldest_renewable)
                .order_by(Mailbox.id)
                .limit(chunk_size)
            ).all()
            if not rows:
                break
            last_id = rows[-1].id
            moves = []
            for mailbox_id, expires_on, current in rows:
                wanted = earliest_action_on(stages, expires_on, today)
                if wanted is not None and (current is None or wanted < current):
                    moves.append((mailbox_id, wanted))
            if moves:
                move_schedule(session, moves)
                moved += len(moves)
    with session_factory() as session, session.begin():
        session.merge(WorkerState(key=SCHEDULE_STATE_KEY, value=fingerprint))
    return moved
