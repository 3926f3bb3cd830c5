"""Platform events, and the sandbox gateway's webhooks: delivered every minute by beat (new events and
retries), on their own queue."""

from __future__ import annotations

from celery import shared_task

from worker import metrics
from worker.services import runtime
from worker.store.db import DATABASE_UNREACHABLE


@shared_task(
    name="pec_renewal.deliver_platform_events", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=3
)
def deliver_platform_events(max_batches: int = 20) -> int:
    """Post the platform events due now, in order per mailbox; returns how many were handled.

    Does nothing without ``PLATFORM_WEBHOOK_URL``: the events are kept.
    """
    rt = runtime.current()
    result = rt.event_sender.deliver_due(max_batches=max_batches)
    metrics.record_events(result)
    # The sandbox's webhooks to our own endpoint, by the same sender (nothing without SANDBOX_WEBHOOK_URL).
    sandbox = rt.sandbox_webhook_sender.deliver_due(max_batches=max_batches)
    return result.handled + sandbox.handled
