"""``pec-renewal report``: what is due in the coming days, and how the last run went.

The forecast reads only mailboxes whose ``next_action_on`` falls in the window
(an index range, like the scan) with the state the scan reads (the ledger of
the current cycle, the charge intents), and decides each day with the scan's
own rule (:func:`worker.services.notices.decide_mailbox`).  Its first day is therefore
exactly what ``run-daily --dry-run`` of that day lists; the later days assume
that nothing else happens meanwhile: no renewal, and every charge succeeds
(a charge-failed is followed, as the job follows it, by the manual schedule).

Every figure counts mailboxes.  ``charge`` counts the auto-renew mailboxes
with charge work that day (a charge, a retry, a lookup of a lost answer, or
the charge-failed email): the dry run's ``charges_due``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.rules.schedule import Stage
from worker.services import charges
from worker.services.notices import decide_mailbox, load_decision_states
from worker.store.models import (
    BouncedAddress,
    DailyRun,
    Invoice,
    InvoiceStatus,
    Mailbox,
    MailboxSchedule,
    NoticeLedgerEntry,
    OutboxMessage,
)

CHARGE = "charge"

#: Mailboxes whose ledger and intents are read at once.
CHUNK = 2000
#: What the rule reads of a mailbox (:func:`worker.services.notices.decide_mailbox`,
#: :func:`worker.services.charges.decide_for`).
_RULE_COLUMNS = (
    "id",
    "expires_on",
    "domain_id",
    "auto_renew",
    "payment_method",
    "card_expires_on",
    "next_action_on",
    "reminders_opt_out_for",
)
#: Decisions one mailbox may take in a window, at most (a safety bound: each moves a day on).
MAX_STEPS = 400


@dataclass(frozen=True)
class Step:
    """One thing the job does for one mailbox on ``day``: an email (``kind``, ``stage``) or ``charge`` work."""

    day: date
    step: str  # an email kind, or CHARGE
    stage: str | None = None  # the email's stage
    action: str | None = None  # for CHARGE: charges.CHARGE, charges.RECONCILE or charges.FAIL
    attempt: int | None = None  # for charges.CHARGE

    def describe(self) -> str:
        if self.step != CHARGE:
            return f"{self.step} {self.stage}"
        if self.action == charges.FAIL:
            return "charge-failed email and an unpaid renewal order (no charge)"
        if self.action == charges.RECONCILE:
            return f"look up the unresolved charge (attempt {self.attempt})"
        return f"charge (attempt {self.attempt})"


@dataclass
class Report:
    start: date
    days: int
    #: day -> step -> mailboxes ("expiry-notice", "charge-notice", "charge", …)
    due: dict[date, Counter] = field(default_factory=dict)
    overdue: int = 0
    last_run: dict | None = None
    outbox: dict[str, int] = field(default_factory=dict)
    bounced_addresses: int = 0
    #: Paid renewals whose invoice waits (for the seller settings or the holder's billing data), by reason.
    invoices_waiting: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "start": self.start.isoformat(),
            "days": self.days,
            "overdue": self.overdue,
            "due": {day.isoformat(): dict(sorted(steps.items())) for day, steps in sorted(self.due.items())},
            "last_run": self.last_run,
            "outbox": self.outbox,
            "bounced_addresses": self.bounced_addresses,
            "invoices_waiting": self.invoices_waiting,
        }


def _copied_states(
    mailbox: Any,
    auto_renew_states: dict[int, charges.CycleState],
    sent: dict[tuple[int, date], set[str]],
) -> tuple[dict[int, charges.CycleState], dict[tuple[int, date], set[str]]]:
    """One mailbox's states, copied: the forecast adds what it assumes is sent without touching the caller's."""
    state = auto_renew_states.get(mailbox.id)
    own_states = (
        {} if state is None else {mailbox.id: charges.CycleState(state.sent, state.failed_on, list(state.intents))}
    )
    key = (mailbox.id, mailbox.expires_on)
    return own_states, {key: set(sent.get(key, ()))}


def forecast_steps(
    mailbox: Any,
    auto_renew_states: dict[int, charges.CycleState],
    sent: dict[tuple[int, date], set[str]],
    *,
    stages: tuple[Stage, ...],
    plan: charges.ChargePlan,
    first_day: date,
    last_day: date,
) -> list[Step]:
    """Every step of one mailbox from ``first_day`` (its next action, or the window's start) to ``last_day``.

    ``mailbox`` has the columns of ``mailboxes``; the states are those of
    :func:`worker.services.notices.load_decision_states`.  Each day is decided with the
    scan's rule on the state as the job would have left it: an email sent is
    in the ledger the next day, the scan moves ``next_action_on``, a charge
    succeeds (the cycle is over), a charge-failed starts the manual schedule.
    """
    # A copy whose next_action_on the forecast moves as the scan would (a row, an ORM object or any
    # object with the columns the rule reads).
    facts = SimpleNamespace(**{name: getattr(mailbox, name) for name in _RULE_COLUMNS})
    own_states, own_sent = _copied_states(mailbox, auto_renew_states, sent)
    state = own_states.get(mailbox.id)
    cycle_key = (mailbox.id, mailbox.expires_on)
    steps: list[Step] = []
    day = first_day
    for _ in range(MAX_STEPS):
        if day > last_day:
            break
        decision = decide_mailbox(facts, own_states, own_sent, stages=stages, today=day, charge_plan=plan)
        if isinstance(decision, charges.AutoRenewDecision) and decision.charge is not None:
            steps.append(Step(day, CHARGE, action=decision.charge, attempt=decision.attempt))
            if decision.charge != charges.FAIL:
                break  # assumed to succeed: this cycle is over, the next starts months later
            # The charge work sends charge-failed (under the day's stage), then follows the
            # manual schedule: a stage due that day goes out with the next scan.
            failed_stage = charges.day_stage(stages, facts.expires_on, day)
            state.sent = state.sent | {(failed_stage.name, charges.CHARGE_FAILED)}
            state.failed_on = day
            after = decide_mailbox(facts, own_states, own_sent, stages=stages, today=day, charge_plan=plan)
            pending = day if after.kind is not None else after.next_action_on
        else:
            if decision.stage is not None:
                steps.append(Step(day, decision.kind, stage=decision.stage.name))
                if state is not None:
                    state.sent = state.sent | {(decision.stage.name, decision.kind)}
                else:
                    own_sent[cycle_key].add(decision.stage.name)
            pending = decision.next_action_on
        if pending is None:
            break
        facts.next_action_on = pending
        day = max(pending, day + timedelta(days=1))
    return steps


def mailbox_steps(
    session: Session,
    mailbox: Any,
    *,
    stages: tuple[Stage, ...],
    plan: charges.ChargePlan,
    first_day: date,
    last_day: date,
) -> list[Step]:
    """:func:`forecast_steps` of one mailbox (a row or an ORM object), its state read here."""
    auto_renew_states, sent = load_decision_states(session, [mailbox])
    return forecast_steps(
        mailbox, auto_renew_states, sent, stages=stages, plan=plan, first_day=first_day, last_day=last_day
    )


def _chunks(rows: Iterable, size: int) -> Iterable[list]:
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_report(
    session: Session, *, start: date, days: int, stages: tuple[Stage, ...], plan: charges.ChargePlan
) -> Report:
    report = Report(start=start, days=days)
    end = start + timedelta(days=days - 1)
    for offset in range(days):
        report.due[start + timedelta(days=offset)] = Counter()
    rows = session.execute(
        select(*Mailbox.__table__.c, MailboxSchedule.next_action_on)
        .join(MailboxSchedule, MailboxSchedule.mailbox_id == Mailbox.id)
        .where(MailboxSchedule.next_action_on <= end)
        .order_by(Mailbox.id)
    ).all()
    for chunk in _chunks(rows, CHUNK):
        auto_renew_states, sent = load_decision_states(session, chunk)
        for mailbox in chunk:
            if mailbox.next_action_on < start:
                report.overdue += 1
            for step in forecast_steps(
                mailbox,
                auto_renew_states,
                sent,
                stages=stages,
                plan=plan,
                first_day=max(mailbox.next_action_on, start),
                last_day=end,
            ):
                report.due[step.day][step.step] += 1

    last = session.scalars(
        select(DailyRun)
        .where(DailyRun.business_date < start + timedelta(days=1))
        .order_by(DailyRun.business_date.desc())
        .limit(1)
    ).first()
    if last is not None:
        report.last_run = {
            "business_date": last.business_date.isoformat(),
            "finished": last.finished_at is not None,
            "summary": last.summary or {},
            # Mailbox notices of that day the renderer refused (left out of their email, or the
            # whole email refused): each ledger row says why (notice_ledger.refused_reason).
            "refused": session.scalar(
                select(func.count()).where(
                    NoticeLedgerEntry.business_date == last.business_date, NoticeLedgerEntry.refused_reason.is_not(None)
                )
            )
            or 0,
        }
        report.outbox = dict(
            session.execute(
                select(OutboxMessage.status, func.count())
                .where(OutboxMessage.business_date == last.business_date)
                .group_by(OutboxMessage.status)
            ).all()
        )
    report.bounced_addresses = session.scalar(select(func.count()).select_from(BouncedAddress)) or 0
    report.invoices_waiting = dict(
        session.execute(
            select(Invoice.waiting_reason, func.count())
            .where(Invoice.status == InvoiceStatus.WAITING.value)
            .group_by(Invoice.waiting_reason)
        ).all()
    )
    return report


def print_report(result: Report, console: Console) -> None:
    """The text form: the days as rows, one column per step, readable at 80 columns.

    The day column is never cut; the step names wrap at their hyphens in the header.
    """
    steps = sorted({step for counts in result.due.values() for step in counts})
    table = Table(title=f"Due from {result.start} ({result.days} days), in mailboxes", box=box.SIMPLE_HEAVY)
    table.add_column("day", no_wrap=True, min_width=10)
    for step in steps:
        table.add_column(step.replace("-", "\n"), justify="right")
    table.add_column("total", justify="right")
    for day, counts in sorted(result.due.items()):
        table.add_row(day.isoformat(), *(str(counts.get(step, 0)) for step in steps), str(sum(counts.values())))
    console.print(table)
    if CHARGE in steps:
        console.print("charge: auto-renew mailboxes with charge work (a charge, a retry, a lookup, or charge-failed).")
    if result.overdue:
        console.print(
            f"{result.overdue} mailboxes are overdue (their date has passed): the next run handles them first."
        )
    if result.last_run is None:
        console.print("No daily run recorded yet.")
    else:
        summary = result.last_run["summary"]
        state = "finished" if result.last_run["finished"] else "NOT FINISHED"
        console.print(
            f"Last run {result.last_run['business_date']} ({state}): sent {summary.get('sent', '-')},"
            f" deferred {summary.get('deferred', '-')}, bounced {summary.get('bounced', '-')},"
            f" failed {summary.get('failed', '-')}, refused {result.last_run.get('refused', 0)}; outbox of that day: "
            + (", ".join(f"{status} {count}" for status, count in sorted(result.outbox.items())) or "empty")
        )
    console.print(f"Bounced reference addresses: {result.bounced_addresses}")
    if result.invoices_waiting:
        console.print(
            f"Invoices waiting: {sum(result.invoices_waiting.values())} ("
            + ", ".join(f"{reason}: {count}" for reason, count in sorted(result.invoices_waiting.items()))
            + "); 'pec-renewal invoices export' issues them once the data have come."
        )
