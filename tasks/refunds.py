"""Open refunds: asked again every 15 minutes by beat, on the charges queue (they wait on the gateway)."""

from __future__ import annotations

from celery import shared_task

from worker.services import runtime
from worker.services.open_refunds import retry_open_refunds
from worker.store.db import DATABASE_UNREACHABLE


@shared_task(name="pec_renewal.retry_refunds", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=3)
def retry_refunds() -> int:
    """Ask the gateways again for every refund left without an answer (its own key: never twice), as
    ``pec-renewal payments refunds-retry`` does; returns how many were asked."""
    rt = runtime.current()
    done = retry_open_refunds(rt.session_factory, settings=rt.settings, clock=rt.clock, today=rt.today())
    return len(done)
