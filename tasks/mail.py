"""Outbox delivery: on demand for fresh messages, and every minute for retries."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_init

from worker import metrics
from worker.mail.templates import compile_templates
from worker.services import runtime
from worker.store.db import DATABASE_UNREACHABLE


@worker_init.connect
def _compile_templates_before_the_pool_forks(**_kwargs) -> None:
    """In the worker's main process: every pool process starts with the templates compiled,
    rather than compiling them in its first mail task (a second or more on a busy machine)."""
    compile_templates()


@shared_task(name="pec_renewal.deliver_outbox", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=10)
def deliver_outbox(outbox_ids: list[int]) -> int:
    """Deliver these outbox messages if they are still due; returns how many were handled."""
    result = runtime.current().relay.deliver_due([int(outbox_id) for outbox_id in outbox_ids])
    metrics.record_relay(result)
    return result.handled


@shared_task(name="pec_renewal.relay_outbox", autoretry_for=DATABASE_UNREACHABLE, retry_backoff=True, max_retries=3)
def relay_outbox(max_batches: int = 50) -> int:
    """Deliver whatever is due: retries whose backoff has passed, and anything a lost task left."""
    rt = runtime.current()
    result = rt.relay.deliver_due(max_batches=max_batches)
    metrics.record_relay(result, capacity=max_batches * rt.settings.relay_batch_size)
    return result.handled
