"""The day: who runs a business date's scan, and the whole daily job in one process.

Two callers start a day, both through :func:`start_day`:

- beat's hourly firing (``tasks.daily.run_daily_scan``, :func:`fan_out_day`)
  claims the date and queues its batches to the notice workers; a later firing
  finds the date claimed and does nothing, takes over a scan that crashed
  (claimed longer than ``SCAN_LEASE`` ago, unfinished), or queues again what is
  still due long after the scan finished (batches lost with the broker);
- ``pec-renewal run-daily`` (:func:`run_day`) runs the whole day to completion
  in this process: scan, charges, rendering and delivery.  It takes the claim
  when the date is free; on a date claimed elsewhere or already finished it
  runs anyway, as a re-run: the mailbox locks and the ledger's key make it
  send nothing twice, and on a finished date it finds nothing more to send.

The auto-renew charges found by the scan run concurrently, in threads bounded
by ``GATEWAY_CONCURRENCY`` (they wait on the gateway's network, not on this
process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker import metrics
from worker.events.delivery import SendResult
from worker.mail.outbox import RelayResult
from worker.services.charges import ChargesResult, run_charges
from worker.services.notices import BatchResult, due_mailbox_batches, process_notice_batch, reconcile_schedule
from worker.services.orders import lapse_orders
from worker.services.platform_events import write_lifecycle_events
from worker.services.runtime import Runtime
from worker.store.db import dialect_insert
from worker.store.models import DailyRun, MailboxSchedule

log = logging.getLogger(__name__)

#: A daily scan that started this long ago without finishing may be taken over.
SCAN_LEASE = timedelta(minutes=30)


# -- The date's claim ----------------------------------------------------------------------------


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
    a while ago scans again whatever is still due that day: batches lost with
    the broker would otherwise wait for the next day, when a stage tied to one
    day (the expiry day's notice) is already passed over.
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


# -- Starting a day ------------------------------------------------------------------------------


class DayAction(StrEnum):
    #: The date was claimed here (or taken over from a crashed scan): scan it, then mark it finished.
    SCAN = "scan"
    #: Its scan finished more than ``SCAN_LEASE`` ago, yet mailboxes are due: scan them again.
    CATCH_UP = "catch-up"
    #: ``run-daily`` on a date claimed elsewhere or finished: it runs to completion anyway.
    RERUN = "rerun"
    #: ``run-daily --dry-run``: list what would be sent; nothing is claimed or written.
    DRY_RUN = "dry-run"
    #: Claimed elsewhere and not stale, or finished a moment ago: leave the date alone.
    NOTHING = "nothing"


@dataclass(frozen=True)
class DayStart:
    business_date: date
    action: DayAction
    #: The ids of the mailboxes due by the date, in batches that never split a reference address
    #: (none when the action is ``NOTHING``).
    batches: list[list[int]] = field(default_factory=list)


def start_day(runtime: Runtime, business_date: date, *, rerun: bool = False, dry_run: bool = False) -> DayStart:
    """Claim ``business_date``'s scan with the lease rule and say what to do with the date.

    ``rerun`` (``run-daily``): a date that is not claimed here runs anyway.
    ``dry_run``: nothing is claimed or changed.  Whenever the date runs, the
    mailboxes' next dates are first brought forward if ``NOTICE_STAGES``
    changed (:func:`~worker.services.notices.reconcile_schedule`), the unpaid
    orders at their deletion date lapse (:func:`lapse_day`), and the platform's
    events of the mailboxes that expired or were deleted are written (once each:
    :func:`~worker.events.queue.write_lifecycle_events`), then the due mailboxes are read.
    """
    if dry_run:
        action = DayAction.DRY_RUN
    else:
        now = runtime.clock()
        with runtime.session_factory() as session, session.begin():
            if claim_daily_run(session, business_date, now):
                action = DayAction.SCAN
            elif scan_finished_before(session, business_date, now - SCAN_LEASE):
                action = DayAction.CATCH_UP
            else:
                action = DayAction.RERUN if rerun else DayAction.NOTHING
        if action is DayAction.NOTHING:
            return DayStart(business_date, action)
        reconcile_schedule(runtime.session_factory, runtime.settings.notice_stages, business_date)
        lapse_day(runtime, business_date)
        with runtime.session_factory() as session, session.begin():
            write_lifecycle_events(session, today=business_date, now=runtime.clock())
    with runtime.session_factory() as session:
        batches = list(due_mailbox_batches(session, business_date, runtime.settings.scan_batch_size))
    return DayStart(business_date, action, batches)


def lapse_day(runtime: Runtime, business_date: date) -> None:
    """Close the unpaid orders that reached their mailboxes' deletion date (``lapsed``)."""
    with runtime.session_factory() as session, session.begin():
        result = lapse_orders(session, business_date)
    if result.lapsed:
        log.info("%s: %d unpaid orders lapsed at their deletion date", business_date, len(result.lapsed))
    for name in result.held:
        log.warning("order %s reached its deletion date with a card/PayPal payment unresolved: left open", name)


def finish_day(runtime: Runtime, business_date: date, summary: dict) -> None:
    """Mark ``business_date``'s scan finished, with its summary."""
    with runtime.session_factory() as session, session.begin():
        record_daily_run(session, business_date, runtime.clock(), summary)


def fan_out_day(runtime: Runtime, business_date: date, queue_batch: Callable[[list[int]], None]) -> int:
    """Beat's firing: start the day and hand each of its batches to ``queue_batch``; returns how many.

    A firing that finds the date's scan finished long ago queues what is still
    due again: those batches were lost (a broker flushed or restarted).  That is
    safe even if they were only slow: each batch locks its mailboxes and the
    ledger's key lets a notice be written once.
    """
    start = start_day(runtime, business_date)
    for mailbox_ids in start.batches:
        queue_batch(mailbox_ids)
    if start.action is DayAction.CATCH_UP and start.batches:
        log.warning("scan of %s: %d batches still due after the scan, queued again", business_date, len(start.batches))
    if start.action is DayAction.SCAN:
        finish_day(runtime, business_date, {"batches": len(start.batches)})
    return len(start.batches)


# -- Running a day -------------------------------------------------------------------------------


@dataclass
class DaySummary:
    business_date: date
    dry_run: bool
    scan: BatchResult = field(default_factory=BatchResult)
    delivery: RelayResult = field(default_factory=RelayResult)
    charges: ChargesResult = field(default_factory=ChargesResult)
    events: SendResult = field(default_factory=SendResult)

    def as_dict(self) -> dict:
        return {
            "business_date": self.business_date.isoformat(),
            "dry_run": self.dry_run,
            "examined": self.scan.examined,
            "notices": {f"{kind} {stage}": count for (kind, stage), count in sorted(self.scan.notices.items())},
            "emails": {f"{kind} {stage}": count for (kind, stage), count in sorted(self.scan.emails.items())},
            "skipped": dict(sorted(self.scan.skipped.items())),
            "superseded": self.scan.superseded,
            "sent": self.delivery.sent,
            "sent_by_kind": {
                f"{kind} {stage}": count for (kind, stage), count in sorted(self.delivery.sent_by_kind.items())
            },
            "deferred": self.delivery.deferred,
            "bounced": self.delivery.bounced,
            "failed": self.delivery.failed,
            "charges_due": len(self.scan.charges_due),
            "charges": self.charges.as_dict(),
            "charge_emails": {f"{kind} {stage}": count for (kind, stage), count in sorted(self.charges.emails.items())},
            "platform_events": self.events.as_dict(),
        }


def scan_batch(runtime: Runtime, mailbox_ids: list[int], business_date: date, *, dry_run: bool = False) -> BatchResult:
    """Write one batch's ledger and outbox rows in a transaction of its own (nothing with ``dry_run``)."""
    with runtime.session_factory() as session:
        try:
            result = process_notice_batch(
                session,
                mailbox_ids,
                today=business_date,
                stages=runtime.settings.notice_stages,
                now=runtime.clock(),
                mail_domain=runtime.mail_domain,
                charge_plan=runtime.charge_plan,
            )
        except BaseException:
            session.rollback()
            raise
        if dry_run:
            session.rollback()
            result.outbox_ids.clear()
        else:
            session.commit()
    return result


def scan_batches(
    runtime: Runtime,
    business_date: date,
    batches: list[list[int]],
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Scan these batches one after the other; the total of their results."""
    total = BatchResult()
    for mailbox_ids in batches:
        total.add(scan_batch(runtime, mailbox_ids, business_date, dry_run=dry_run))
        if progress:
            progress(len(mailbox_ids))
    return total


def scan_day(
    runtime: Runtime,
    business_date: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Write the ledger and outbox rows due on ``business_date`` (nothing with ``dry_run``), without a claim."""
    with runtime.session_factory() as reader:
        batches = list(due_mailbox_batches(reader, business_date, runtime.settings.scan_batch_size))
    return scan_batches(runtime, business_date, batches, dry_run=dry_run, progress=progress)


def run_day(
    runtime: Runtime,
    business_date: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    delivery_progress: Callable[[int], None] | None = None,
) -> DaySummary:
    """Run the whole day to completion (``run-daily``): start it, scan, charge, then deliver everything due
    (the emails, then the platform's events)."""
    summary = DaySummary(business_date, dry_run)
    start = start_day(runtime, business_date, rerun=True, dry_run=dry_run)
    summary.scan = scan_batches(runtime, business_date, start.batches, dry_run=dry_run, progress=progress)
    if dry_run:
        return summary
    summary.charges = charge_day(runtime, business_date, summary.scan.charges_due)
    summary.delivery = runtime.relay.deliver_due(progress=delivery_progress)
    summary.events = runtime.event_sender.deliver_due()
    runtime.sandbox_webhook_sender.deliver_due()  # nothing without SANDBOX_WEBHOOK_URL
    finish_day(runtime, business_date, summary.as_dict())
    metrics.record_day(summary)
    return summary


def charge_day(runtime: Runtime, business_date: date, mailbox_ids: list[int]) -> ChargesResult:
    """The charge work the scan found (charges, reconciliations, charge-failed), concurrently."""
    return run_charges(
        runtime.session_factory,
        runtime.gateway,
        mailbox_ids,
        today=business_date,
        concurrency=1 if runtime.settings.is_embedded else runtime.settings.gateway_concurrency,
        **runtime.charge_options,
    )


def count_due(runtime: Runtime, business_date: date) -> int:
    """How many mailboxes are due by ``business_date`` (for a progress bar)."""
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).where(MailboxSchedule.next_action_on <= business_date)) or 0
