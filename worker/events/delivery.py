"""The sender of platform events: signed webhooks, at least once, in order per mailbox.

A sender claims a batch of due events by pushing their ``next_attempt_at`` forward by a lease
(one ``UPDATE … RETURNING``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), as the email relay
does (:mod:`worker.mail.outbox`): two senders never post the same event at once, and a sender
that dies only delays its batch until the lease runs out.  Only the earliest pending event of
each mailbox can be claimed: a later one waits while an earlier one is pending, leased or
retrying, so the platform hears of one mailbox's changes in the order they happened.

Each event is an HTTP POST to ``PLATFORM_WEBHOOK_URL`` with a JSON body ``{"type",
"timestamp", "data"}``, signed by the Standard Webhooks specification (the ``standardwebhooks``
library) with ``PLATFORM_WEBHOOK_SECRET``: headers ``webhook-id`` (the event's, the same at
every attempt, so the platform drops a copy it already had), ``webhook-timestamp`` (the
attempt's) and ``webhook-signature``.  Its outcome is committed before the next POST: a crash
between the platform's answer and that commit posts that one event again, with the same id.

A 2xx delivers.  A timeout, a connection error, a 408, a 429 or a 5xx is retried with
exponential backoff for up to ``RETRY_FOR`` (three days) after the event was written; then,
and at once for any other answer (a 4xx, a redirect), the event is ``failed`` and waits for an
operator (``pec-renewal events retry``).  A failed event no longer holds back the later events
of its mailbox.

The same sender posts the sandbox gateway's webhooks (``sandbox_webhooks``, whose columns are
these, the events of one sandbox charge in order) to ``SANDBOX_WEBHOOK_URL``: ``EventSender``
takes the table and the column its order follows.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import httpx
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Row,
    Table,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, aliased
from standardwebhooks.webhooks import Webhook

from worker.store.db import dialect_of, quick_commit_connection, update_by_id
from worker.store.models import EventStatus, PlatformEvent

log = logging.getLogger(__name__)

#: How long a claimed batch is reserved for the sender that claimed it: longer than a batch's
#: POSTs can last (``BATCH_SIZE`` times the timeout).
CLAIM_LEASE = timedelta(minutes=10)
BATCH_SIZE = 50
#: Each POST: 5 s to connect, 10 s for the rest.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=4)
#: How long after it was written an event is retried; then it is failed.
RETRY_FOR = timedelta(days=3)
#: HTTP answers retried like a timeout; any other 4xx fails the event at once.
RETRIED_STATUSES = frozenset({408, 429})

_EVENTS = PlatformEvent.__table__
#: Written into the statements, not sent as parameters: a partial index (``status = 'pending'``,
#: ``status = 'failed'``) serves only a statement that names the value itself.
_PENDING = literal(EventStatus.PENDING.value, literal_execute=True)
_FAILED = literal(EventStatus.FAILED.value, literal_execute=True)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff after ``attempts`` failed attempts: 1, 2, 4 … minutes, at most 4 hours."""
    return min(FIRST_RETRY * 2 ** min(max(attempts - 1, 0), 20), LONGEST_RETRY)


def body_of(row: Row) -> str:
    """The JSON body of an event: its type, when it happened, and its data."""
    payload = {"type": row.type, "timestamp": row.occurred_at.isoformat(), "data": row.data}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass
class SendResult:
    delivered: int = 0
    deferred: int = 0  # a retry is due later
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    delivered_by_type: Counter = field(default_factory=Counter)

    def add(self, other: SendResult) -> None:
        self.delivered += other.delivered
        self.deferred += other.deferred
        self.failed += other.failed
        self.errors.update(other.errors)
        self.delivered_by_type.update(other.delivered_by_type)

    @property
    def handled(self) -> int:
        return self.delivered + self.deferred + self.failed

    def as_dict(self) -> dict:
        return {
            "delivered": self.delivered,
            "deferred": self.deferred,
            "failed": self.failed,
            "delivered_by_type": dict(sorted(self.delivered_by_type.items())),
        }


def claim_events(
    connection: Connection, now: datetime, limit: int, table: Table = _EVENTS, stream: str = "mailbox_id"
) -> list[Row]:
    """Reserve up to ``limit`` due events, each the earliest pending one of its mailbox (of its
    ``stream``); in ``id`` order."""
    parameters = {"c_now": now, "c_lease_end": now + CLAIM_LEASE, "c_limit": limit}
    statement = _claim_statement(dialect_of(connection), table, stream)
    return sorted(connection.execute(statement, parameters).all(), key=_by_id)


def _by_id(row: Row) -> int:
    return row.id


@functools.cache
def _claim_statement(dialect: Dialect, events: Table, stream: str):
    """The claim, built once: a CTE locks the candidates (``SKIP LOCKED``), the ``UPDATE`` leases them."""
    now = bindparam("c_now", type_=events.c.next_attempt_at.type)
    earlier = aliased(events, name="earlier")
    due = or_(events.c.next_attempt_at.is_(None), events.c.next_attempt_at <= now)
    first_of_mailbox = ~exists().where(
        and_(earlier.c[stream] == events.c[stream], earlier.c.id < events.c.id, earlier.c.status == _PENDING)
    )
    candidate = (
        select(events.c.id)
        .where(events.c.status == _PENDING, due, first_of_mailbox)
        .order_by(events.c.id)
        .limit(bindparam("c_limit", type_=Integer()))
        .with_for_update(skip_locked=True)
        .cte("candidate")
    )
    columns = ("id", "webhook_id", "type", stream, "data", "occurred_at", "attempts", "retrying_since")
    return (
        update(events)
        .where(events.c.id == candidate.c.id, events.c.status == _PENDING, due)
        .values(next_attempt_at=bindparam("c_lease_end", type_=events.c.next_attempt_at.type))
        .returning(*(events.c[name] for name in columns))
    )


class EventSender:
    """Posts due events to the platform (or, given ``table`` and ``stream``, the sandbox's webhooks to
    our own endpoint); see the module's docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        url: str | None,
        secret: str | None,
        clock: Callable[[], datetime],
        batch_size: int = BATCH_SIZE,
        transport: httpx.BaseTransport | None = None,
        table: Table = _EVENTS,
        stream: str = "mailbox_id",
        label: str = "platform event",
    ):
        self._table = table
        self._stream = stream
        self._label = label
        self._engine = engine
        self._url = url
        self._webhook = Webhook(secret) if secret else None
        self._clock = clock
        self._batch_size = batch_size
        self._transport = transport

    @property
    def enabled(self) -> bool:
        """False without ``PLATFORM_WEBHOOK_URL``: events are kept, not sent."""
        return self._url is not None and self._webhook is not None

    def deliver_due(self, *, max_batches: int | None = None) -> SendResult:
        """Post every event due now, batch after batch, until none is due (or ``max_batches``).

        Each claimed event leaves the due set (delivered, failed, or deferred), and the next of
        its mailbox becomes due, so the loop ends with every mailbox's queue delivered as far as
        the platform accepts it.
        """
        total = SendResult()
        if not self.enabled:
            return total
        batches = 0
        with httpx.Client(timeout=TIMEOUT, transport=self._transport, follow_redirects=False) as client:
            with quick_commit_connection(self._engine) as connection:
                while max_batches is None or batches < max_batches:
                    events = claim_events(connection, self._clock(), self._batch_size, self._table, self._stream)
                    connection.commit()
                    if not events:
                        break
                    batches += 1
                    for event in events:
                        outcome = self._post(client, event, total)
                        update_by_id(connection, self._table, [outcome])
                        connection.commit()
        return total

    def _post(self, client: httpx.Client, event: Row, result: SendResult) -> dict:
        """POST one event; returns its new columns (nothing is written here)."""
        assert self._url is not None and self._webhook is not None
        now = self._clock()
        attempts = event.attempts + 1
        body = body_of(event)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(event.webhook_id, now.astimezone(UTC), body),
        }
        row = {
            "id": event.id,
            "attempts": attempts,
            "next_attempt_at": None,
            "delivered_at": None,
            "retrying_since": event.retrying_since,
        }
        try:
            answer = client.post(self._url, content=body.encode(), headers=headers)
        except httpx.TransportError as error:  # a timeout, a refused or dropped connection
            return self._retry(event, row, now, f"{type(error).__name__}: {error}", result)
        if answer.is_success:
            result.delivered += 1
            result.delivered_by_type[event.type] += 1
            return {**row, "status": EventStatus.DELIVERED.value, "last_error": None, "delivered_at": now}
        error = f"HTTP {answer.status_code}: {' '.join(answer.text[:300].split())}"
        if answer.status_code >= 500 or answer.status_code in RETRIED_STATUSES:
            return self._retry(event, row, now, error, result)
        result.failed += 1
        result.errors[f"http_{answer.status_code}"] += 1
        log.warning("%s %s (%s) refused: %s", self._label, event.webhook_id, event.type, error)
        return {**row, "status": EventStatus.FAILED.value, "last_error": error[:1000]}

    def _retry(self, event: Row, row: dict, now: datetime, error: str, result: SendResult) -> dict:
        result.errors["transient"] += 1
        since = event.retrying_since or now
        row = {**row, "retrying_since": since}
        next_attempt_at = now + retry_delay(row["attempts"])
        if next_attempt_at > since + RETRY_FOR:
            result.failed += 1
            log.warning(
                "%s %s (%s) failed after %s attempts: %s",
                self._label,
                event.webhook_id,
                event.type,
                row["attempts"],
                error,
            )
            return {**row, "status": EventStatus.FAILED.value, "last_error": f"retried for 3 days: {error}"[:1000]}
        result.deferred += 1
        log.info("%s %s deferred after attempt %s: %s", self._label, event.webhook_id, row["attempts"], error)
        return {
            **row,
            "status": EventStatus.PENDING.value,
            "next_attempt_at": next_attempt_at,
            "last_error": error[:1000],
        }


@dataclass(frozen=True)
class EventCounts:
    pending: int
    failed: int
    #: When the oldest pending event was written (None when none is pending).
    oldest_pending_at: datetime | None


def event_counts(executor: Session | Connection) -> EventCounts:
    """How many events are pending and failed, and the oldest pending one's time (indexed reads)."""
    pending = _EVENTS.c.status == _PENDING
    row = executor.execute(
        select(
            select(func.count()).where(pending).scalar_subquery().label("pending"),
            select(func.count()).where(_EVENTS.c.status == _FAILED).scalar_subquery().label("failed"),
            select(func.min(_EVENTS.c.occurred_at)).where(pending).scalar_subquery().label("oldest"),
        )
    ).one()
    return EventCounts(row.pending, row.failed, row.oldest)


def list_events(executor: Session | Connection, *, status: str | None = None, limit: int = 100) -> list[dict]:
    """The latest events (of ``status``), newest first, as plain data."""
    statement = select(_EVENTS).order_by(_EVENTS.c.id.desc()).limit(limit)
    if status is not None:
        statement = statement.where(_EVENTS.c.status == literal(status, literal_execute=True))
    return [
        {
            "id": row.id,
            "webhook_id": row.webhook_id,
            "type": row.type,
            "mailbox_id": row.mailbox_id,
            "status": row.status,
            "attempts": row.attempts,
            "occurred_at": row.occurred_at.isoformat(),
            "business_date": row.business_date.isoformat(),
            "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
            "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
            "last_error": row.last_error,
            "data": row.data,
        }
        for row in executor.execute(statement)
    ]


def requeue_failed_events(executor: Session | Connection, since: date | None = None) -> int:
    """Failed events back to pending, due now, their attempts and their three days started again
    (from now); ``since``: only those written on or after that business date.  Returns how many."""
    statement = (
        update(_EVENTS)
        .where(_EVENTS.c.status == _FAILED)
        .values(status=EventStatus.PENDING.value, attempts=0, next_attempt_at=None, retrying_since=None)
    )
    if since is not None:
        statement = statement.where(_EVENTS.c.business_date >= since)
    return executor.execute(statement).rowcount


__all__: Iterable[str] = [
    "EventSender",
    "SendResult",
    "claim_events",
    "event_counts",
    "list_events",
    "requeue_failed_events",
    "retry_delay",
]
