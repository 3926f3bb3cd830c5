"""Auto-renew charges: the sweep that fans them out in batches, and the batch that charges them.

Thin tasks: they parse ids and dates and call :mod:`worker.services.charges`.  A batch
task is acknowledged late and rejected (so redelivered) if its worker dies:
that is safe because every charge's intent (its claim) is committed before the
gateway is called, so a redelivered batch finds those charges claimed.  A
charge whose worker died before recording the answer is looked up by the first
sweep (every 15 minutes) once ``CHARGE_RECONCILE_AFTER_MINUTES`` have passed,
the same business day.
"""

from __future__ import annotations

from datetime import date

from celery import shared_task

from tasks.mail import deliver_outbox
from worker import metrics
from worker.services import runtime
from worker.services.charges import iter_due_charge_batches, run_charges
from worker.store.db import DATABASE_UNREACHABLE

#: Mailboxes per charge task; each task runs its charges GATEWAY_CONCURRENCY at a time.
CHARGE_BATCH_SIZE = 200


@shared_task(name="pec_renewal.charge_sweep", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=10)
def sweep_charges(business_date: str | None = None) -> int:
    """Queue the charge work due on a business date (today in Europe/Rome by default), in batches."""
    rt = runtime.current()
    day = date.fromisoformat(business_date) if business_date else rt.today()
    with rt.session_factory() as session:
        batches = list(iter_due_charge_batches(session, day, CHARGE_BATCH_SIZE, rt.charge_plan))
    for mailbox_ids in batches:
        charge_batch.delay(mailbox_ids, day.isoformat())
    return len(batches)


@shared_task(
    name="pec_renewal.charge_batch",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=DATABASE_UNREACHABLE,
    retry_backoff=True,
    max_retries=10,
)
def charge_batch(mailbox_ids: list[int], business_date: str) -> int:
    """Charge one batch concurrently (threads), then queue the delivery of its emails."""
    rt = runtime.current()
    result = run_charges(
        rt.session_factory,
        rt.gateway,
        [int(mailbox_id) for mailbox_id in mailbox_ids],
        today=date.fromisoformat(business_date),
        concurrency=rt.settings.gateway_concurrency,
        **rt.charge_options,
    )
    metrics.record_charges(result, concurrency=rt.settings.gateway_concurrency)
    if result.outbox_ids:
        deliver_outbox.delay(result.outbox_ids)
    return result.charges
