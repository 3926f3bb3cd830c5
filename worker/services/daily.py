"""The whole daily job in one process: scan, ledger, charges, rendering and delivery.

``pec-renewal run-daily`` calls ``run_day``; under Celery the same steps run
as tasks (``tasks/``) fanned out in batches.  The auto-renew charges found by
the scan run concurrently, in threads bounded by ``GATEWAY_CONCURRENCY``
(they wait on the gateway's network, not on this process).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from worker import metrics
from worker.services.charges import ChargesResult, run_charges
from worker.services.notices import BatchResult, due_mailbox_batches, process_notice_batch, reconcile_schedule, record_daily_run
from worker.mail.outbox import RelayResult
from worker.services.runtime import Runtime


@dataclass
class DaySummary:
    business_date: date
    dry_run: bool
    scan: BatchResult = field(default_factory=BatchResult)
    delivery: RelayResult = field(default_factory=RelayResult)
    charges: ChargesResult = field(default_factory=ChargesResult)

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
            "charge_emails": {
                f"{kind} {stage}": count for (kind, stage), count in sorted(self.charges.emails.items())
            },
        }


def scan_day(
    runtime: Runtime,
    business_date: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Write the ledger and outbox rows due on ``business_date`` (nothing with ``dry_run``)."""
    settings = runtime.settings
    total = BatchResult()
    with runtime.session_factory() as reader:
        batches = list(due_mailbox_batches(reader, business_date, settings.scan_batch_size))
    for mailbox_ids in batches:
        with runtime.session_factory() as session:
            try:
                result = process_notice_batch(
                    session,
                    mailbox_ids,
                    today=business_date,
                    stages=settings.notice_stages,
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
        total.add(result)
        if progress:
            progress(len(mailbox_ids))
    return total


def run_day(
    runtime: Runtime,
    business_date: date,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    delivery_progress: Callable[[int], None] | None = None,
) -> DaySummary:
    """Run the whole day to completion: scan, then deliver everything due."""
    summary = DaySummary(business_date, dry_run)
    if not dry_run:
        reconcile_schedule(runtime.session_factory, runtime.settings.notice_stages, business_date)
    summary.scan = scan_day(runtime, business_date, dry_run=dry_run, progress=progress)
    if dry_run:
        return summary
    summary.charges = charge_day(runtime, business_date, summary.scan.charges_due)
    summary.delivery = runtime.relay.deliver_due(progress=delivery_progress)
    with runtime.session_factory() as session, session.begin():
        record_daily_run(session, business_date, runtime.clock(), summary.as_dict())
    metrics.record_day(summary)
    return summary


def charge_day(runtime: Runtime, business_date: date, mailbox_ids: list[int]) -> ChargesResult:
    """The charge work the scan found (charges, reconciliations, charge-failed), concurrently."""
    return run_charges(
        runtime.session_factory,
        runtime.gateway,
        mailbox_ids,
        today=business_date,
        clock=runtime.clock,
        stages=runtime.settings.notice_stages,
        mail_domain=runtime.mail_domain,
        plan=runtime.charge_plan,
        concurrency=1 if runtime.settings.is_embedded else runtime.settings.gateway_concurrency,
    )


def count_due(runtime: Runtime, business_date: date) -> int:
    from sqlalchemy import func, select

    from worker.store.models import Mailbox

    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).where(Mailbox.next_action_on <= business_date)) or 0
