"""The daily scan and its fan-out."""

from __future__ import annotations

import logging
from datetime import date

from celery import shared_task

from worker import metrics

from worker.services import runtime
from worker.store.db import DATABASE_UNREACHABLE
from worker.services.notices import (
    SCAN_LEASE,
    claim_daily_run,
    due_mailbox_batches,
    process_notice_batch,
    reconcile_schedule,
    record_daily_run,
    scan_finished_before,
)

log = logging.getLogger(__name__)


@shared_task(name="pec_renewal.daily_scan", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=10)
def run_daily_scan(business_date: str | None = None) -> int:
    """Claim the scan of a business date (today in Europe/Rome by default) and fan it out.

    Returns the number of batches queued.  A firing that finds the date
    already scanned queues nothing, unless that scan finished more than
    ``SCAN_LEASE`` ago and mailboxes are still due by the date: their batches
    were lost (a broker flushed or restarted), and are queued again.  That is
    safe even if they were only slow: each batch locks its mailboxes and the
    ledger's key lets a notice be written once.
    """
    rt = runtime.current()
    day = date.fromisoformat(business_date) if business_date else rt.today()
    now = rt.clock()
    with rt.session_factory() as session, session.begin():
        claimed = claim_daily_run(session, day, now)
        catching_up = not claimed and scan_finished_before(session, day, now - SCAN_LEASE)
    if not claimed and not catching_up:
        return 0
    if claimed:
        reconcile_schedule(rt.session_factory, rt.settings.notice_stages, day)
    with rt.session_factory() as session:
        batches = list(due_mailbox_batches(session, day, rt.settings.scan_batch_size))
    for mailbox_ids in batches:
        process_notices.delay(mailbox_ids, day.isoformat())
    if catching_up:
        if batches:
            log.warning("scan of %s: %d batches still due after the scan, queued again", day, len(batches))
        return len(batches)
    with rt.session_factory() as session, session.begin():
        record_daily_run(session, day, rt.clock(), {"batches": len(batches)})
    return len(batches)


@shared_task(name="pec_renewal.notice_batch", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=10)
def process_notices(mailbox_ids: list[int], business_date: str) -> int:
    """Write the ledger and outbox rows of one batch, then queue their delivery and its charges."""
    from tasks.charges import CHARGE_BATCH_SIZE, charge_batch
    from tasks.mail import deliver_outbox

    rt = runtime.current()
    with rt.session_factory() as session, session.begin():
        result = process_notice_batch(
            session,
            [int(mailbox_id) for mailbox_id in mailbox_ids],
            today=date.fromisoformat(business_date),
            stages=rt.settings.notice_stages,
            now=rt.clock(),
            mail_domain=rt.mail_domain,
            charge_plan=rt.charge_plan,
        )
    metrics.record_notice_batch(result)
    # Queued after the commit, so the relay finds the rows.  If this message is
    # lost, the periodic relay delivers them anyway.
    if result.outbox_ids:
        deliver_outbox.delay(result.outbox_ids)
    # Charges start straight after the scan; the 15-minute sweep catches any lost message.
    for start in range(0, len(result.charges_due), CHARGE_BATCH_SIZE):
        charge_batch.delay(result.charges_due[start : start + CHARGE_BATCH_SIZE], business_date)
    return len(result.outbox_ids)
