"""The daily notice scan: which mailboxes are due, and the ledger and outbox rows for them.

The scan reads only mailboxes whose ``next_action_on`` has come (an indexed
column), so its cost follows the work that is due, not the size of the fleet.
Each batch is handled in one transaction: the mailboxes are locked, the due
stage is decided by a pure rule, the ledger rows and their outbox messages are
written together, and ``next_action_on`` moves to the next stage.  The ledger's
unique key (mailbox, expiry cycle, stage) makes a second run, or a second
process, write nothing more.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import BigInteger, Row, any_, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from worker.services import charges

from worker.rules import schedule
from worker.store.db import dialect_insert
from worker.mail.emails import installation_id, message_id_for
from worker.store.models import (
    DailyRun,
    Domain,
    Holder,
    Mailbox,
    NoticeLedgerEntry,
    OutboxMessage,
    OutboxStatus,
    WorkerState,
)
from worker.rules.schedule import Stage

EXPIRY_NOTICE = "expiry-notice"
EXPIRED_NOTICE = "expired-notice"
DOMAIN_EXPIRY_NOTICE = "domain-expiry-notice"

#: A daily scan that started this long ago without finishing may be taken over.
SCAN_LEASE = timedelta(minutes=30)


@dataclass(frozen=True)
class NoticeDecision:
    """What the scan does today for one mailbox."""

    kind: str | None = None
    stage: Stage | None = None
    skip_reason: str | None = None
    next_action_on: date | None = None
    superseded: tuple[Stage, ...] = ()


def decide_notice(
    *,
    stages: tuple[Stage, ...],
    expires_on: date,
    on_domain: bool,
    auto_renew: bool,
    pending_since: date | None,
    today: date,
    already_sent: frozenset[str],
) -> NoticeDecision:
    """The pure rule: the most urgent stage due today, unless sent, deleted or not ours.

    ``pending_since`` is the mailbox's ``next_action_on`` before this run: the
    stages dated from then up to the one sent today were passed over for good.
    """
    next_on = schedule.next_action_on(stages, expires_on, today)
    if schedule.mailbox_state(expires_on, today) is schedule.MailboxState.DELETED:
        return NoticeDecision(skip_reason="deleted", next_action_on=None)
    if auto_renew and not on_domain:
        # Auto-renew mailboxes get charge notices, not these (their own flow).
        return NoticeDecision(skip_reason="auto-renew", next_action_on=next_on)
    due = schedule.due_stage(stages, expires_on, today)
    if due is None:
        return NoticeDecision(skip_reason="not-due", next_action_on=next_on)
    if due.name in already_sent:
        return NoticeDecision(skip_reason="already-sent", next_action_on=next_on)
    if on_domain:
        kind = DOMAIN_EXPIRY_NOTICE
    else:
        kind = EXPIRED_NOTICE if due.after_expiry else EXPIRY_NOTICE
    superseded = tuple(
        stage
        for stage in schedule.superseded_stages(stages, expires_on, pending_since, due)
        if stage.name not in already_sent
    )
    return NoticeDecision(kind=kind, stage=due, next_action_on=next_on, superseded=superseded)


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

    def add(self, other: "BatchResult") -> None:
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
    # The due rows come through the DBAPI cursor of the session's own connection
    # (in its transaction) as plain ``(address, id)`` tuples, and are grouped by
    # address in a dict: SQLAlchemy's result rows, or a sort (in Python or by
    # the database's collation), each cost more than the read itself on a
    # normal day, and a sort costs more the more shuffled the addresses come.
    # An address keeps a bare id until it has a second mailbox: a list per row
    # made the garbage collector walk the fresh rows over and over, twice the
    # cost of the grouping itself (bench/RESULTS.md).
    connection = session.connection()
    if connection.dialect.paramstyle == "qmark":  # SQLite keeps dates as ISO text
        sql, day = "SELECT reference_email, id FROM mailboxes WHERE next_action_on <= ?", today.isoformat()
    else:
        sql, day = "SELECT reference_email, id FROM mailboxes WHERE next_action_on <= %s", today
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, (day,))
        rows = cursor.fetchall()
    finally:
        cursor.close()
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


#: A batch's mailboxes with what the emails need of their holder and domain, locked: plain
#: rows, not ORM objects (loading 500 mailboxes with their holders as objects cost more than
#: the rest of the batch; bench/daily_peak.py).  On PostgreSQL the ids go as one array.
_BATCH_COLUMNS = (*Mailbox.__table__.c, Holder.name.label("holder_name"), Domain.name.label("domain_name"))


def _batch_mailboxes(session: Session, mailbox_ids: list[int], today: date) -> list[Row]:
    if session.get_bind().dialect.name == "postgresql":
        chosen = Mailbox.id == any_(bindparam("ids", mailbox_ids, type_=postgresql.ARRAY(BigInteger)))
    else:
        chosen = Mailbox.id.in_(mailbox_ids)
    return session.execute(
        select(*_BATCH_COLUMNS)
        .join(Holder, Holder.id == Mailbox.holder_id)
        .outerjoin(Domain, Domain.id == Mailbox.domain_id)
        .where(chosen, Mailbox.next_action_on <= today)
        .order_by(Mailbox.id)
        .with_for_update(of=Mailbox.__table__)
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
        if session.get_bind().dialect.name == "postgresql":
            of_batch = NoticeLedgerEntry.mailbox_id == any_(bindparam("ids", manual_ids, type_=postgresql.ARRAY(BigInteger)))
        else:
            of_batch = NoticeLedgerEntry.mailbox_id.in_(manual_ids)
        for mailbox_id, cycle, stage in session.execute(
            select(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.cycle_expires_on, NoticeLedgerEntry.stage).where(
                of_batch
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
    ``charge`` is work for the charge service.
    """
    state = auto_renew_states.get(mailbox.id)
    if state is not None:
        return charges.decide_for(mailbox, state, stages, today, charge_plan)
    return decide_notice(
        stages=stages,
        expires_on=mailbox.expires_on,
        on_domain=mailbox.domain_id is not None,
        auto_renew=mailbox.auto_renew,
        pending_since=mailbox.next_action_on,
        today=today,
        already_sent=frozenset(sent.get((mailbox.id, mailbox.expires_on), ())),
    )


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
    result = BatchResult()
    mailboxes = _batch_mailboxes(session, mailbox_ids, today)
    if not mailboxes:
        return result

    auto_renew_states, sent = load_decision_states(session, mailboxes)

    # (address, kind, stage, language, mailbox id for the per-mailbox auto-renew emails or 0)
    groups: dict[tuple[str, str, str, str, int], list[Row]] = defaultdict(list)
    moves: list[tuple[int, date | None]] = []
    for mailbox in mailboxes:
        result.examined += 1
        decision = decide_mailbox(mailbox, auto_renew_states, sent, stages=stages, today=today, charge_plan=charge_plan)
        if isinstance(decision, charges.AutoRenewDecision) and decision.charge is not None:
            # Left due (next_action_on unchanged): the charge service claims it.
            result.charges_due.append(mailbox.id)
            result.skipped["charge-due"] += 1
            continue
        moves.append((mailbox.id, decision.next_action_on))
        if decision.stage is None:
            result.skipped[decision.skip_reason] += 1
            continue
        result.superseded += len(decision.superseded)
        result.notices[(decision.kind, decision.stage.name)] += 1
        own = mailbox.id if decision.kind in charges.AUTO_RENEW_KINDS else 0
        key = (mailbox.reference_email.lower(), decision.kind, decision.stage.name, mailbox.language, own)
        groups[key].append(mailbox)

    outbox_rows = []
    ledger_rows = []
    installation = installation_id(session) if groups else None
    for (to_address, kind, stage, language, own), members in sorted(groups.items()):
        members.sort(key=lambda mailbox: mailbox.address)
        keys = [(mailbox.id, mailbox.expires_on.isoformat(), stage) for mailbox in members]
        holder_names = {mailbox.holder_name for mailbox in members}
        outbox_rows.append(
            {
                "message_id": message_id_for(keys, mail_domain, installation_id=installation),
                "kind": kind,
                "stage": stage,
                "language": language,
                "to_address": to_address,
                "business_date": today,
                "context": {
                    "holder_name": holder_names.pop() if len(holder_names) == 1 else None,
                    "mailboxes": [
                        {
                            "id": mailbox.id,
                            "address": mailbox.address,
                            "expires_on": mailbox.expires_on.isoformat(),
                            "plan": mailbox.plan,
                            "domain": mailbox.domain_name,
                        }
                        for mailbox in members
                    ],
                    **({"charge": charges.charge_context(members[0], today=today, plan=charge_plan)} if own else {}),
                },
                "status": OutboxStatus.PENDING.value,
                "attempts": 0,
                "created_at": now,
            }
        )
        ledger_rows.append([(mailbox.id, mailbox.expires_on, stage, kind) for mailbox in members])
        result.emails[(kind, stage)] += 1
        result.planned.append(PlannedEmail(to_address, kind, stage, language, [m.address for m in members]))

    if session.get_bind().dialect.name == "postgresql":
        write = _write_batch_postgresql
    else:
        write = _write_batch
    result.outbox_ids.extend(write(session, outbox_rows, ledger_rows, moves, today))
    return result


def _write_batch(session: Session, outbox_rows: list[dict], ledger_rows: list[list[tuple]], moves, today: date) -> list[int]:
    """The batch's outbox messages, their ledger rows and the mailboxes' next dates, with the ORM's bulk statements."""
    outbox_ids: list[int] = []
    if outbox_rows:
        outbox_ids = session.scalars(
            insert(OutboxMessage).returning(OutboxMessage.id, sort_by_parameter_order=True), outbox_rows
        ).all()
        session.execute(
            insert(NoticeLedgerEntry),
            [
                {
                    "mailbox_id": mailbox_id,
                    "cycle_expires_on": cycle,
                    "stage": stage,
                    "kind": kind,
                    "business_date": today,
                    "outbox_message_id": outbox_id,
                }
                for outbox_id, rows in zip(outbox_ids, ledger_rows, strict=True)
                for mailbox_id, cycle, stage, kind in rows
            ],
        )
    if moves:
        session.execute(update(Mailbox), [{"id": mailbox_id, "next_action_on": on} for mailbox_id, on in moves])
    return list(outbox_ids)


#: The same three writes on PostgreSQL, each one statement over the batch's rows sent as one
#: JSON document (``json_to_recordset``): a fixed, small statement that psycopg prepares once,
#: where the bulk INSERT with one parameter per value (5,000 for a batch) was parsed afresh
#: every batch, and arrays of text cost psycopg a regular expression per element to escape,
#: four times what ``json.dumps`` costs (bench/daily_peak.py).
_INSERT_OUTBOX_SQL = """
INSERT INTO outbox_messages (message_id, kind, stage, language, to_address, business_date, context,
                             status, attempts, created_at)
SELECT message_id, kind, stage, language, to_address, %(business_date)s, context, %(status)s, 0, %(now)s
FROM json_to_recordset(%(rows)s::json)
     AS batch (message_id text, kind text, stage text, language text, to_address text, context json)
RETURNING id, message_id"""

_INSERT_LEDGER_SQL = """
INSERT INTO notice_ledger (mailbox_id, cycle_expires_on, stage, kind, business_date, outbox_message_id)
SELECT mailbox_id, cycle_expires_on, stage, kind, %(business_date)s, outbox_message_id
FROM json_to_recordset(%(rows)s::json)
     AS batch (mailbox_id bigint, cycle_expires_on date, stage text, kind text, outbox_message_id bigint)"""

_MOVE_MAILBOXES_SQL = """
UPDATE mailboxes SET next_action_on = batch.next_action_on
FROM json_to_recordset(%(rows)s::json) AS batch (id bigint, next_action_on date)
WHERE mailboxes.id = batch.id"""

_OUTBOX_JSON_FIELDS = ("message_id", "kind", "stage", "language", "to_address", "context")


def _write_batch_postgresql(
    session: Session, outbox_rows: list[dict], ledger_rows: list[list[tuple]], moves, today: date
) -> list[int]:
    cursor = session.connection().connection.cursor()
    try:
        outbox_ids: list[int] = []
        if outbox_rows:
            cursor.execute(
                _INSERT_OUTBOX_SQL,
                {
                    "business_date": today,
                    "status": OutboxStatus.PENDING.value,
                    "now": outbox_rows[0]["created_at"],
                    "rows": json.dumps([{name: row[name] for name in _OUTBOX_JSON_FIELDS} for row in outbox_rows]),
                },
                prepare=True,
            )
            id_of = dict((message_id, outbox_id) for outbox_id, message_id in cursor.fetchall())
            outbox_ids = [id_of[row["message_id"]] for row in outbox_rows]
            ledger = [
                {
                    "mailbox_id": mailbox_id,
                    "cycle_expires_on": cycle.isoformat(),
                    "stage": stage,
                    "kind": kind,
                    "outbox_message_id": outbox_id,
                }
                for outbox_id, rows in zip(outbox_ids, ledger_rows, strict=True)
                for mailbox_id, cycle, stage, kind in rows
            ]
            cursor.execute(_INSERT_LEDGER_SQL, {"business_date": today, "rows": json.dumps(ledger)}, prepare=True)
        if moves:
            rows = [{"id": mailbox_id, "next_action_on": on.isoformat() if on else None} for mailbox_id, on in moves]
            cursor.execute(_MOVE_MAILBOXES_SQL, {"rows": json.dumps(rows)}, prepare=True)
    finally:
        cursor.close()
    return outbox_ids


def claim_daily_run(session: Session, business_date: date, now: datetime) -> bool:
    """Claim the scan of ``business_date``; False if it ran or is running elsewhere.

    The row is the scan's key: two beats, a restart or a daylight-saving
    change cannot make a date scan twice.  A claim left unfinished for longer
    than the lease (a crashed scan) may be taken over, by compare-and-swap.
    """
    inserted = session.execute(
        dialect_insert(session, DailyRun)
        .values(business_date=business_date, started_at=now)
        .on_conflict_do_nothing(index_elements=["business_date"])
        .returning(DailyRun.business_date)
    ).first()
    if inserted is not None:
        return True
    taken_over = session.execute(
        update(DailyRun)
        .where(
            DailyRun.business_date == business_date,
            DailyRun.finished_at.is_(None),
            DailyRun.started_at < now - SCAN_LEASE,
        )
        .values(started_at=now)
        .returning(DailyRun.business_date)
    ).first()
    return taken_over is not None


def scan_finished_before(session: Session, business_date: date, cutoff: datetime) -> bool:
    """Whether the scan of ``business_date`` finished before ``cutoff``.

    Beat fires the scan every hour; a firing that finds the date's scan finished
    a while ago re-queues whatever is still due that day (see
    ``tasks.daily.run_daily_scan``): batches lost with the broker would
    otherwise wait for the next day, when a stage tied to one day (the expiry
    day's notice) is already passed over.
    """
    finished_at = session.scalar(select(DailyRun.finished_at).where(DailyRun.business_date == business_date))
    return finished_at is not None and finished_at < cutoff


def record_daily_run(session: Session, business_date: date, now: datetime, summary: dict) -> None:
    """Mark the scan of ``business_date`` finished, creating the row if needed."""
    run = session.get(DailyRun, business_date, with_for_update=True)
    if run is None:
        run = DailyRun(business_date=business_date, started_at=now)
        session.add(run)
    run.finished_at = now
    run.summary = summary


SCHEDULE_STATE_KEY = "notice_stages"


def earliest_action_on(stages: tuple[Stage, ...], expires_on: date, today: date) -> date | None:
    """When the scan must next look at a mailbox under ``stages``: today if a stage is due, else the next one."""
    if schedule.due_stage(stages, expires_on, today) is not None:
        return today
    return schedule.next_action_on(stages, expires_on, today)


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
                select(Mailbox.id, Mailbox.expires_on, Mailbox.next_action_on)
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
                    moves.append({"id": mailbox_id, "next_action_on": wanted})
            if moves:
                session.execute(update(Mailbox), moves)
                moved += len(moves)
    with session_factory() as session, session.begin():
        session.merge(WorkerState(key=SCHEDULE_STATE_KEY, value=fingerprint))
    return moved
