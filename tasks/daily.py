"""The daily scan and its fan-out: thin tasks over :mod:`worker.services.daily`.

They parse dates and ids, call the service, queue what it found, and retry
when the database is unreachable.
"""

from __future__ import annotations

from datetime import date

from celery import shared_task

from tasks.charges import CHARGE_BATCH_SIZE, charge_batch
from tasks.mail import deliver_outbox
from worker import metrics
from worker.services import daily, runtime
from worker.store.db import DATABASE_UNREACHABLE


@shared_task(name="pec_renewal.daily_scan", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=10)
def run_daily_scan(business_date: str | None = None) -> int:
    """Start a business date's scan (today in Europe/Rome by default) and queue its batches.

    Returns the number of batches queued (:func:`worker.services.daily.fan_out_day`).
    """
    rt = runtime.current()
    day = date.fromisoformat(business_date) if business_date else rt.today()
    return daily.fan_out_day(rt, day, lambda mailbox_ids: process_notices.delay(mailbox_ids, day.isoformat()))


@shared_task(name="pec_renewal.notice_batch", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=10)
def process_notices(mailbox_ids: list[int], business_date: str) -> int:
    """Write the ledger and outbox rows of one batch, then queue their delivery and its charges."""
    rt = runtime.current()
    result = daily.scan_batch(rt, [int(mailbox_id) for mailbox_id in mailbox_ids], date.fromisoformat(business_date))
    metrics.record_notice_batch(result)
    # Queued after the commit, so the relay finds the rows.  If this message is
    # lost, the periodic relay delivers them anyway.
    if result.outbox_ids:
        deliver_outbox.delay(result.outbox_ids)
    # Charges start straight after the scan; the 15-minute sweep catches any lost message.
    for start in range(0, len(result.charges_due), CHARGE_BATCH_SIZE):
        charge_batch.delay(result.charges_due[start : start + CHARGE_BATCH_SIZE], business_date)
    return len(result.outbox_ids)
