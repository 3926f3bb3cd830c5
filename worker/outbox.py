"""The outbox relay: delivers queued emails at least once, with a stable Message-ID.

A relay claims a batch of due messages by pushing their ``next_attempt_at``
forward by a lease (compare-and-swap; ``SKIP LOCKED`` on PostgreSQL), so two
relays never send the same message at once, and a relay that dies only delays
its batch until the lease runs out.  Each outcome is committed as soon as it is
known: a crash between the SMTP ``250`` and that commit can repeat one message,
with the same Message-ID, and nothing is ever lost.

Errors are classified: an SMTP 4xx, a timeout or a dropped connection is
retried with exponential backoff; a 5xx marks the message and the address
bounced and is never retried.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import dialect_insert
from worker.emails import EmailRenderer
from worker.mailers import DeliveryError, Mailer
from worker.models import BouncedAddress, OutboxMessage, OutboxStatus

log = logging.getLogger(__name__)

#: How long a claimed batch is reserved for the relay that claimed it.
CLAIM_LEASE = timedelta(minutes=10)
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=2)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff after ``attempts`` failed attempts: 1, 2, 4 … minutes, at most 2 hours."""
    return min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_RETRY)


@dataclass
class RelayResult:
    sent: int = 0
    deferred: int = 0  # transient failure, retried later
    bounced: int = 0  # permanent failure (5xx)
    failed: int = 0  # transient failures until the attempts ran out
    errors: Counter = field(default_factory=Counter)
    sent_by_kind: Counter = field(default_factory=Counter)  # (kind, stage) -> emails sent

    def add(self, other: "RelayResult") -> None:
        self.sent_by_kind.update(other.sent_by_kind)
        self.sent += other.sent
        self.deferred += other.deferred
        self.bounced += other.bounced
        self.failed += other.failed
        self.errors.update(other.errors)

    @property
    def handled(self) -> int:
        return self.sent + self.deferred + self.bounced + self.failed


def claim_due_messages(
    session: Session, now: datetime, limit: int, only_ids: Iterable[int] | None = None
) -> list[int]:
    """Reserve up to ``limit`` due messages for this relay; returns their ids."""
    due = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.status == OutboxStatus.PENDING.value,
            or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if only_ids is not None:
        due = due.where(OutboxMessage.id.in_(list(only_ids)))
    ids = session.scalars(due).all()
    if ids:
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(next_attempt_at=now + CLAIM_LEASE)
        )
    return list(ids)


class OutboxRelay:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        mailer: Mailer,
        renderer: EmailRenderer,
        *,
        clock: Callable[[], datetime],
        max_attempts: int,
        batch_size: int = 200,
    ):
        self._sessions = session_factory
        self._mailer = mailer
        self._renderer = renderer
        self._clock = clock
        self._max_attempts = max_attempts
        self._batch_size = batch_size

    def deliver_due(
        self,
        only_ids: Iterable[int] | None = None,
        *,
        max_batches: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RelayResult:
        """Deliver every message due now (or only these ids), batch after batch.

        ``progress`` is called with the number of messages handled after each batch.
        """
        total = RelayResult()
        only = list(only_ids) if only_ids is not None else None
        batches = 0
        while max_batches is None or batches < max_batches:
            with self._sessions() as session, session.begin():
                ids = claim_due_messages(session, self._clock(), self._batch_size, only)
            if not ids:
                break
            batches += 1
            delivered = self._deliver(ids)
            total.add(delivered)
            if progress:
                progress(delivered.handled)
            if only is not None:
                break
        return total

    def _deliver(self, ids: list[int]) -> RelayResult:
        """Send the claimed messages, committing each outcome as soon as it is known."""
        result = RelayResult()
        with self._sessions() as session:
            with session.begin():
                messages = session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.id.in_(ids), OutboxMessage.status == OutboxStatus.PENDING.value)
                    .order_by(OutboxMessage.id)
                ).all()
            postgresql = session.get_bind().dialect.name == "postgresql"
            for message in messages:
                with session.begin():
                    if postgresql:
                        # Only this transaction: a database crash may forget the last
                        # outcomes, which resends them (same Message-ID), never loses one.
                        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                    self._deliver_one(session, message, result)
        return result

    def _deliver_one(self, session: Session, message: OutboxMessage, result: RelayResult) -> None:
        now = self._clock()
        message.attempts += 1
        try:
            email = self._renderer.render(
                kind=message.kind,
                stage=message.stage,
                language=message.language,
                to_address=message.to_address,
                message_id=message.message_id,
                context=message.context,
                now=now,
            )
            self._mailer.send(email.sender, email.recipient, email.as_bytes())
        except DeliveryError as error:
            message.last_error = str(error)[:1000]
            if error.permanent:
                message.status = OutboxStatus.BOUNCED.value
                message.next_attempt_at = None
                self._record_bounce(session, message.to_address, now, str(error))
                result.bounced += 1
                result.errors["bounced"] += 1
                log.warning("outbox %s bounced (%s)", message.id, error.smtp_code)
                return
            result.errors["transient"] += 1
            self._defer(message, now, result)
            log.info("outbox %s deferred after attempt %s (%s)", message.id, message.attempts, error.smtp_code)
            return
        except ValueError as error:
            # The stored data can never render (the renderer refuses it): retrying is pointless.
            message.last_error = f"refused by the renderer: {error}"[:1000]
            message.status = OutboxStatus.FAILED.value
            message.next_attempt_at = None
            result.failed += 1
            result.errors["invalid"] += 1
            log.error("outbox %s refused by the renderer: %s", message.id, error)
            return
        except Exception as error:  # a template bug must not stop the other messages; retried after a fix
            message.last_error = f"{type(error).__name__}: {error}"[:1000]
            result.errors["render"] += 1
            self._defer(message, now, result)
            log.exception("outbox %s could not be rendered", message.id)
            return
        message.status = OutboxStatus.SENT.value
        message.sent_at = now
        message.next_attempt_at = None
        message.last_error = None
        result.sent += 1
        result.sent_by_kind[(message.kind, message.stage)] += 1

    def _defer(self, message: OutboxMessage, now: datetime, result: RelayResult) -> None:
        if message.attempts >= self._max_attempts:
            message.status = OutboxStatus.FAILED.value
            message.next_attempt_at = None
            result.failed += 1
        else:
            message.next_attempt_at = now + retry_delay(message.attempts)
            result.deferred += 1

    @staticmethod
    def _record_bounce(session: Session, address: str, now: datetime, reply: str) -> None:
        statement = dialect_insert(session, BouncedAddress).values(
            address=address, first_bounced_at=now, last_bounced_at=now, bounces=1, last_reply=reply[:1000]
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["address"],
                set_={
                    "last_bounced_at": now,
                    "bounces": BouncedAddress.bounces + 1,
                    "last_reply": reply[:1000],
                },
            )
        )
