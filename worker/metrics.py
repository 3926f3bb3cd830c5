"""Prometheus metrics, named for the questions an operator asks.

Two kinds:

* **Counters of what the worker did**, recorded from the result objects the
  work already returns (:func:`record_notice_batch`, :func:`record_relay`,
  :func:`record_charges`), by the thin tasks and by ``run-daily``.
* **Gauges of what waits in the database** (outbox depth, the age of the
  oldest due work, unresolved charges), read at scrape time by
  :class:`DatabaseCollector` with one query on indexed columns, so they are
  right whichever process did the work, and even when no worker runs.

Celery's prefork pool runs tasks in several processes, so the worker uses
prometheus-client's multiprocess mode: :func:`enable_multiprocess` (called in
the worker's main process before the pool starts) points every process at a
directory of its own under ``VAR_DIR/metrics``, and :func:`serve_worker_metrics`
serves the sum of the processes' files on ``PEC_RENEWAL_METRICS_PORT``.  The
counters are created on first use, never at import, so none of them is built
before the mode is chosen.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import cache
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import Engine, and_, func, literal, or_, select
from sqlalchemy.pool import NullPool

from config.settings import Settings
from worker.store.db import make_engine
from worker.store.models import (
    REFUND_OPEN_STATES,
    ChargeIntent,
    ChargeStatus,
    EventStatus,
    GatewayEvent,
    GatewayRefund,
    MailboxSchedule,
    OutboxMessage,
    OutboxQueueEntry,
    PlatformEvent,
)

log = logging.getLogger(__name__)

PREFIX = "pec_renewal_"
#: Values of the ``limit`` label of ``pec_renewal_at_capacity_total``.
RELAY_LIMIT = "relay_batches"
GATEWAY_LIMIT = "gateway_concurrency"


@dataclass(frozen=True)
class _Counters:
    examined: Counter
    queued: Counter
    skipped: Counter
    sent: Counter
    deferred: Counter
    bounced: Counter
    failed: Counter
    charges: Counter
    gateway_calls: Counter
    at_capacity: Counter
    notices_refused: Counter
    emails_refused: Counter
    events: Counter


@cache
def counters() -> _Counters:
    """This process's counters, registered in the default registry on first use."""
    return _Counters(
        examined=Counter(PREFIX + "mailboxes_examined", "Mailboxes the notice scan examined."),
        queued=Counter(
            PREFIX + "emails_queued",
            "Emails written to the outbox (by the notice scan and the charge work), by kind and stage.",
            ["kind", "stage"],
        ),
        skipped=Counter(
            PREFIX + "mailboxes_skipped",
            "Mailboxes the notice scan examined and sent nothing to, by reason.",
            ["reason"],
        ),
        sent=Counter(
            PREFIX + "emails_sent", "Emails the SMTP server accepted (250), by kind and stage.", ["kind", "stage"]
        ),
        deferred=Counter(
            PREFIX + "emails_deferred", "Delivery attempts that failed for now (4xx, timeout) and are retried."
        ),
        bounced=Counter(
            PREFIX + "emails_bounced", "Emails refused for good (5xx): never retried, the address is marked."
        ),
        failed=Counter(
            PREFIX + "emails_failed",
            "Emails given up: still failing after PEC_RENEWAL_OUTBOX_MAX_ATTEMPTS attempts,"
            " or refused by the renderer.",
        ),
        charges=Counter(
            PREFIX + "charges",
            "Auto-renew mailboxes handled by the charge work, by result"
            " (succeeded, failed, retry, unknown, idle, skipped, error).",
            ["result"],
        ),
        gateway_calls=Counter(
            PREFIX + "gateway_calls", "Calls to the payment gateway, by call (charge, lookup).", ["call"]
        ),
        at_capacity=Counter(
            PREFIX + "at_capacity",
            "Runs that hit a limit: relay_batches (a relay task used all its batches and left mail due),"
            " gateway_concurrency (a charge batch held more mailboxes than PEC_RENEWAL_GATEWAY_CONCURRENCY).",
            ["limit"],
        ),
        notices_refused=Counter(
            PREFIX + "notices_refused",
            "Mailbox notices the renderer refused (an address that needs SMTPUTF8, say), by reason: left out"
            " of an email that went to the other mailboxes, or in an email refused whole.",
            ["reason"],
        ),
        emails_refused=Counter(
            PREFIX + "emails_refused",
            "Emails the renderer refused whole (the reference address, or every mailbox), by reason:"
            " marked failed at once, never retried; also in pec_renewal_emails_failed_total.",
            ["reason"],
        ),
        events=Counter(
            PREFIX + "platform_events",
            "Platform events posted, by outcome: delivered, deferred (retried later), failed (given up).",
            ["outcome"],
        ),
    )


def record_notice_batch(result) -> None:
    """Count a notice batch's (or a whole scan's) ``worker.services.notices.BatchResult``."""
    metrics = counters()
    metrics.examined.inc(result.examined)
    _count_by_kind(metrics.queued, result.emails.items())
    for reason, count in result.skipped.items():
        metrics.skipped.labels(reason=reason).inc(count)


def record_relay(result, *, capacity: int | None = None) -> None:
    """Count a ``worker.mail.outbox.RelayResult``; ``capacity``: the most messages the run could handle."""
    metrics = counters()
    _count_by_kind(metrics.sent, result.sent_by_kind.items())
    metrics.deferred.inc(result.deferred)
    metrics.bounced.inc(result.bounced)
    metrics.failed.inc(result.failed)
    for reason, count in result.refused.items():
        metrics.notices_refused.labels(reason=reason).inc(count)
    for reason, count in result.refused_emails.items():
        metrics.emails_refused.labels(reason=reason).inc(count)
    if capacity is not None and result.handled >= capacity:
        metrics.at_capacity.labels(limit=RELAY_LIMIT).inc()


def record_charges(result, *, concurrency: int | None = None) -> None:
    """Count a ``worker.services.charges.ChargesResult``; ``concurrency``: the gateway calls allowed at once."""
    metrics = counters()
    for outcome, count in result.outcomes.items():
        metrics.charges.labels(result=outcome).inc(count)
    if result.errors:
        metrics.charges.labels(result="error").inc(result.errors)
    metrics.gateway_calls.labels(call="charge").inc(result.charges)
    metrics.gateway_calls.labels(call="lookup").inc(result.lookups)
    _count_by_kind(metrics.queued, result.emails.items())
    if concurrency is not None and result.examined > concurrency:
        metrics.at_capacity.labels(limit=GATEWAY_LIMIT).inc()


def record_events(result) -> None:
    """The outcomes of a platform events sender's run (:class:`worker.events.delivery.SendResult`)."""
    events = counters().events
    for outcome in ("delivered", "deferred", "failed"):
        if getattr(result, outcome):
            events.labels(outcome).inc(getattr(result, outcome))


def record_day(summary) -> None:
    """Count a whole ``run-daily`` (``worker.services.daily.DaySummary``)."""
    if summary.dry_run:
        return
    record_notice_batch(summary.scan)
    record_charges(summary.charges)
    record_relay(summary.delivery)
    record_events(summary.events)


def _count_by_kind(counter: Counter, items: Iterable[tuple[tuple[str, str], int]]) -> None:
    for (kind, stage), count in items:
        counter.labels(kind=kind, stage=stage).inc(count)


# -- Gauges read from the database at scrape time ------------------------------------------------


def scan_due_at(day: date, settings: Settings) -> datetime:
    """When a mailbox whose ``next_action_on`` is ``day`` becomes due: that day's scan time."""
    hour, minute = settings.daily_scan_at
    return datetime.combine(day, time(hour, minute), tzinfo=settings.timezone)


#: Written into the statement, so that the partial indexes of pending and of failed events serve it.
_EVENT_PENDING = literal(EventStatus.PENDING.value, literal_execute=True)
_EVENT_FAILED = literal(EventStatus.FAILED.value, literal_execute=True)


def database_query(now: datetime):
    """One statement of scalar subqueries, each an index range: ``outbox_queue`` (its due time,
    and the partial index of failed messages), ``mailbox_schedule`` (next_action_on), the partial
    index of unresolved ``charge_intents``, and those of pending and of failed ``platform_events``."""
    queue = OutboxQueueEntry
    waiting = ~queue.failed
    due = and_(waiting, or_(queue.next_attempt_at.is_(None), queue.next_attempt_at <= now))
    unresolved = ChargeIntent.status.in_((ChargeStatus.STARTED.value, ChargeStatus.UNKNOWN.value))

    def count(*where):
        return select(func.count()).where(*where).scalar_subquery()

    return select(
        count(due).label("outbox_due"),
        count(waiting, queue.next_attempt_at > now).label("outbox_waiting"),
        count(queue.failed).label("outbox_failed"),
        select(func.min(queue.next_attempt_at))
        .where(waiting, queue.next_attempt_at <= now)
        .scalar_subquery()
        .label("oldest_retry_due_at"),
        select(func.min(OutboxMessage.created_at))
        .join(queue, queue.outbox_message_id == OutboxMessage.id)
        .where(waiting, queue.next_attempt_at.is_(None))
        .scalar_subquery()
        .label("oldest_new_created_at"),
        select(func.min(MailboxSchedule.next_action_on)).scalar_subquery().label("oldest_next_action_on"),
        count(unresolved, ChargeIntent.status == ChargeStatus.STARTED.value).label("charges_started"),
        count(unresolved, ChargeIntent.status == ChargeStatus.UNKNOWN.value).label("charges_unknown"),
        count(PlatformEvent.status == _EVENT_PENDING).label("events_pending"),
        count(PlatformEvent.status == _EVENT_FAILED).label("events_failed"),
        select(func.min(PlatformEvent.occurred_at))
        .where(PlatformEvent.status == _EVENT_PENDING)
        .scalar_subquery()
        .label("oldest_event_at"),
    )


class DatabaseCollector:
    """The gauges that describe the database, read with one query at each scrape.

    If the database cannot be read, ``pec_renewal_database_up`` is 0 and the
    other gauges are left out, so the scrape itself still succeeds.
    """

    def __init__(self, engine: Engine, settings: Settings, clock: Callable[[], datetime]):
        self._engine = engine
        self._settings = settings
        self._clock = clock

    def describe(self):
        return []  # no query at registration

    def collect(self):
        up = GaugeMetricFamily(PREFIX + "database_up", "1 if the last scrape could read the database, else 0.")
        now = self._clock()
        try:
            with self._engine.connect() as connection:
                row = connection.execute(database_query(now)).one()
                connection.rollback()
        except Exception as error:  # a scrape must answer even when the database does not
            log.warning("metrics: cannot read the database: %s", type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        depth = GaugeMetricFamily(
            PREFIX + "outbox_depth",
            "Outbox messages by state: due (to send now), waiting (a retry's backoff or a relay's claim),"
            " failed (given up; 'pec-renewal outbox retry' requeues them).",
            labels=["state"],
        )
        depth.add_metric(["due"], row.outbox_due)
        depth.add_metric(["waiting"], row.outbox_waiting)
        depth.add_metric(["failed"], row.outbox_failed)
        yield depth

        age = GaugeMetricFamily(
            PREFIX + "oldest_due_age_seconds",
            "Seconds since the oldest due work became due: queue=outbox (a pending message's first try"
            " or retry time), queue=mailboxes (the scan time of the oldest next_action_on); 0 when none.",
            labels=["queue"],
        )
        outbox_since = [moment for moment in (row.oldest_retry_due_at, row.oldest_new_created_at) if moment is not None]
        age.add_metric(["outbox"], _age(now, min(outbox_since)) if outbox_since else 0.0)
        mailbox_since = row.oldest_next_action_on
        age.add_metric(["mailboxes"], _age(now, scan_due_at(mailbox_since, self._settings)) if mailbox_since else 0.0)
        yield age

        charges = GaugeMetricFamily(
            PREFIX + "charge_intents_unresolved",
            "Charge intents without a final answer: started (the gateway may have been called) or unknown"
            " (its answer was lost); each is looked up by its idempotency key on the next run.",
            labels=["status"],
        )
        charges.add_metric([ChargeStatus.STARTED.value], row.charges_started)
        charges.add_metric([ChargeStatus.UNKNOWN.value], row.charges_unknown)
        yield charges

        events = GaugeMetricFamily(
            PREFIX + "platform_events",
            "Platform events by state: pending (not yet accepted by the platform, retries included),"
            " failed (refused, or retried for three days; 'pec-renewal events retry' requeues them).",
            labels=["state"],
        )
        events.add_metric(["pending"], row.events_pending)
        events.add_metric(["failed"], row.events_failed)
        yield events
        yield GaugeMetricFamily(
            PREFIX + "platform_event_oldest_pending_age_seconds",
            "Seconds since the oldest pending platform event was written; 0 when none is pending.",
            value=_age(now, row.oldest_event_at) if row.oldest_event_at is not None else 0.0,
        )


class GatewayCollector:
    """What the gateways told us and what we gave back, counted from their tables at each scrape.

    ``pec_renewal_gateway_events_total{gateway, outcome}``: webhook events by what processing
    did (registered, amount_mismatch, refund_due, dispute, ...); ``pec_renewal_gateway_refunds_total
    {kind, status}``: refunds asked of a gateway.  Rows are never deleted, so both only grow.
    ``pec_renewal_gateway_refunds_open``: refunds still without the gateway's answer (``started``,
    ``unknown``), which the beat entry ``refunds-retry`` asks again.
    """

    def __init__(self, engine: Engine):
        self._engine = engine

    def describe(self):
        return []

    def collect(self):
        try:
            with self._engine.connect() as connection:
                events = connection.execute(
                    select(GatewayEvent.gateway, GatewayEvent.outcome, func.count()).group_by(
                        GatewayEvent.gateway, GatewayEvent.outcome
                    )
                ).all()
                refunds = connection.execute(
                    select(GatewayRefund.kind, GatewayRefund.status, func.count()).group_by(
                        GatewayRefund.kind, GatewayRefund.status
                    )
                ).all()
                connection.rollback()
        except Exception as error:  # DatabaseCollector reports the database as down
            log.warning("metrics: cannot read the gateway tables: %s", type(error).__name__)
            return
        family = CounterMetricFamily(
            PREFIX + "gateway_events",
            "Webhook events from the gateways, by gateway and by what processing did: registered,"
            " already_registered, payment_pending, payment_failed, refunded, amount_mismatch, unmatched,"
            " refund_due (a double payment, refunded automatically), dispute, refunded_first, not_an_order.",
            labels=["gateway", "outcome"],
        )
        for gateway, outcome, count in events:
            family.add_metric([gateway, outcome], count)
        yield family
        family = CounterMetricFamily(
            PREFIX + "gateway_refunds",
            "Refunds asked of a gateway, by kind (automatic, requested) and status (started, unknown:"
            " asked again by 'payments refunds-retry'; succeeded, pending, failed).",
            labels=["kind", "status"],
        )
        for kind, status, count in refunds:
            family.add_metric([kind, status], count)
        yield family
        open_refunds = GaugeMetricFamily(
            PREFIX + "gateway_refunds_open",
            "Refunds without the gateway's answer yet (started, unknown), asked again every 15 minutes by beat"
            " ('payments refunds-retry' does the same).",
        )
        open_refunds.add_metric([], sum(count for _kind, status, count in refunds if status in REFUND_OPEN_STATES))
        yield open_refunds


def _age(now: datetime, since: datetime) -> float:
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return max(0.0, (now - since).total_seconds())


def database_registry(engine: Engine, settings: Settings, clock: Callable[[], datetime]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, settings, clock))
    registry.register(GatewayCollector(engine))
    return registry


# -- The Celery worker's metrics port -------------------------------------------------------------


def multiprocess_dir(settings: Settings, pid: int) -> Path:
    return settings.var_dir / "metrics" / f"worker-{pid}"


def enable_multiprocess(settings: Settings, pid: int | None = None) -> Path:
    """Point this process and the pool processes it forks at a fresh metrics directory.

    One directory per worker (named by its main process id, so two workers on
    one host never mix or wipe each other's files); the directories of
    workers no longer running are removed.
    """
    from prometheus_client import values

    pid = os.getpid() if pid is None else pid
    parent = settings.var_dir / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob("worker-*"):
        if old.name != f"worker-{pid}" and not _alive(old.name.removeprefix("worker-")):
            shutil.rmtree(old, ignore_errors=True)
    directory = multiprocess_dir(settings, pid)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # prometheus-client chose its value class when it was imported (perhaps
    # already, by a task module): choose again, before any counter exists.
    values.ValueClass = values.get_value_class()
    return directory


def _alive(pid_text: str) -> bool:
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def serve_worker_metrics(settings: Settings, clock: Callable[[], datetime]):
    """Serve every pool process's counters and the database gauges on the metrics port.

    Returns the HTTP server, or None if the port cannot be bound (logged: the
    worker goes on sending mail without metrics).
    """
    from prometheus_client import start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)
    # A connection per scrape (NullPool): the worker's main process keeps none
    # open, so pool processes it forks later inherit no connection.
    engine = make_engine(settings.database_url, poolclass=NullPool)
    registry.register(DatabaseCollector(engine, settings, clock))
    registry.register(GatewayCollector(engine))
    try:
        server, _thread = start_http_server(settings.metrics_port, settings.metrics_address, registry=registry)
    except OSError as error:
        log.error(
            "metrics: cannot listen on %s:%s (%s); set PEC_RENEWAL_METRICS_PORT to a free port, or 0",
            settings.metrics_address,
            settings.metrics_port,
            error.strerror or error,
        )
        return None
    log.info("metrics: serving on http://%s:%s/metrics", settings.metrics_address, settings.metrics_port)
    return server
