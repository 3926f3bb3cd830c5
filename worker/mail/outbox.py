"""The outbox relay: delivers queued emails at least once, with a stable Message-ID.

A relay claims a batch of due messages by pushing their queue rows'
``next_attempt_at`` forward by a lease (one ``UPDATE … RETURNING`` on
``outbox_queue``; ``SKIP LOCKED`` on PostgreSQL), so two relays never send the
same message at once, and a relay that dies only delays its batch until the
lease runs out.  An outcome updates the message's row (a HOT update: no index
of ``outbox_messages`` names a column it changes) and, in the same
transaction, deletes its queue row (sent, bounced) or keeps it with the next
attempt's time (deferred) or marked failed.  Outcomes are committed in small
groups (at most ``outcome_group`` sends, ``PEC_RENEWAL_RELAY_OUTCOME_GROUP``; 1
commits each before the next send) and at the end of every batch: a crash
between an SMTP ``250`` and the commit of its group can repeat at most that
group's messages, each with the same Message-ID, and nothing is ever lost.

Every statement is SQLAlchemy Core, the same on PostgreSQL and SQLite; the
relay writes its claims and outcomes on one connection of its own
(:func:`worker.store.db.quick_commit_connection`).

Errors are classified: an SMTP 4xx, a timeout or a dropped connection is
retried with exponential backoff; a 5xx marks the message and the address
bounced and is never retried.

Data the renderer refuses (an address that needs SMTPUTF8, say) never stops
the rest of an email: a notice's mailbox that is refused is left out and the
email goes to the others; the refused mailbox's ledger row gets the reason
(``notice_ledger.refused_reason``).  When the email itself cannot be sent (its
reference address is refused, or every mailbox is) the message is ``failed`` at
once, never retried, with the reason on the message and on its ledger rows.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, Integer, Row, bindparam, delete, exists, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker

from worker.mail.emails import EmailRenderer
from worker.mail.headers import RefusedMailbox, refusal_reason
from worker.mail.mailers import DeliveryError, Mailer
from worker.mail.queue import WITHDRAWABLE_KINDS
from worker.store.db import dialect_insert, dialect_of, one_of, quick_commit_connection, update_by_id
from worker.store.models import BouncedAddress, NoticeLedgerEntry, OutboxMessage, OutboxQueueEntry, OutboxStatus

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
    failed: int = 0  # transient failures until the attempts ran out, or refused by the renderer
    errors: Counter = field(default_factory=Counter)
    sent_by_kind: Counter = field(default_factory=Counter)  # (kind, stage) -> emails sent
    #: reason -> mailboxes whose notice the renderer refused: left out of an email that went,
    #: or in an email refused whole (counted once, when the message's outcome is final).
    refused: Counter = field(default_factory=Counter)
    #: reason -> emails refused whole (their reference address, or every mailbox): also in ``failed``.
    refused_emails: Counter = field(default_factory=Counter)

    def add(self, other: RelayResult) -> None:
        self.sent_by_kind.update(other.sent_by_kind)
        self.refused.update(other.refused)
        self.refused_emails.update(other.refused_emails)
        self.sent += other.sent
        self.deferred += other.deferred
        self.bounced += other.bounced
        self.failed += other.failed
        self.errors.update(other.errors)

    @property
    def handled(self) -> int:
        return self.sent + self.deferred + self.bounced + self.failed


def claim_due_messages(
    executor: Session | Connection, now: datetime, limit: int, only_ids: Iterable[int] | None = None
) -> list[int]:
    """Reserve up to ``limit`` due messages for this relay; returns their ids (see :func:`claim_messages`)."""
    return [row.id for row in claim_messages(executor, now, limit, only_ids)]


_OUTBOX = OutboxMessage.__table__
_QUEUE = OutboxQueueEntry.__table__

#: What the relay reads of a claimed message.
_MESSAGE_COLUMNS = (
    _OUTBOX.c.id,
    _OUTBOX.c.kind,
    _OUTBOX.c.stage,
    _OUTBOX.c.language,
    _OUTBOX.c.to_address,
    _OUTBOX.c.message_id,
    _OUTBOX.c.context,
    _OUTBOX.c.attempts,
    _OUTBOX.c.status,
)


def claim_messages(
    executor: Session | Connection, now: datetime, limit: int, only_ids: Iterable[int] | None = None
) -> list[Row]:
    """Reserve up to ``limit`` due messages for this relay; returns what the relay reads of them, by id.

    Two statements, in the caller's transaction.  The first leases the queue rows:
    a CTE locks the candidates in ``outbox_queue`` (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL: rows another relay holds are passed over, not waited for; SQLite
    has one writer at a time), and the ``UPDATE … RETURNING`` moves the due ones'
    ``next_attempt_at`` to the lease's end and returns their ids.  The second
    reads those messages by primary key.  The lease is a narrow row's update:
    the wide ``outbox_messages`` row is not written until the outcome.  With
    ``only_ids`` the candidates are found by key alone and checked after the lock.
    """
    parameters = {"c_now": now, "c_lease_end": now + CLAIM_LEASE, "c_limit": limit}
    if only_ids is not None:
        parameters["c_ids"] = [int(outbox_id) for outbox_id in only_ids]
    dialect = dialect_of(executor)
    claimed = executor.execute(_claim_statement(dialect, only_ids is not None), parameters).scalars().all()
    if not claimed:
        return []
    rows = executor.execute(_read_statement(dialect), {"r_ids": list(claimed)}).all()
    return sorted(rows, key=_by_id)


@functools.cache
def _claim_statement(dialect: Dialect, by_ids: bool):
    """The lease, built once (its parameters: ``c_now``, ``c_lease_end``, ``c_limit`` and ``c_ids``)."""
    now = bindparam("c_now", type_=_QUEUE.c.next_attempt_at.type)
    limit = bindparam("c_limit", type_=Integer())
    key = _QUEUE.c.outbox_message_id
    candidate = select(key, _QUEUE.c.failed, _QUEUE.c.next_attempt_at).order_by(key)
    if by_ids:
        candidate = candidate.where(one_of(dialect, key, key="c_ids"))
    else:
        candidate = candidate.where(
            ~_QUEUE.c.failed, or_(_QUEUE.c.next_attempt_at.is_(None), _QUEUE.c.next_attempt_at <= now)
        ).limit(limit)
    candidate = candidate.with_for_update(skip_locked=True).cte("candidate")
    claimed = (
        select(candidate.c.outbox_message_id)
        .where(
            ~candidate.c.failed,
            or_(candidate.c.next_attempt_at.is_(None), candidate.c.next_attempt_at <= now),
        )
        .order_by(candidate.c.outbox_message_id)
        .limit(limit)
        .subquery("claimed")
    )
    return (
        update(_QUEUE)
        .where(key == claimed.c.outbox_message_id)
        .values(next_attempt_at=bindparam("c_lease_end", type_=_QUEUE.c.next_attempt_at.type))
        .returning(key)
    )


@functools.cache
def _read_statement(dialect: Dialect):
    """What the relay reads of the claimed messages (parameter ``r_ids``)."""
    return select(*_MESSAGE_COLUMNS).where(one_of(dialect, _OUTBOX.c.id, key="r_ids"))


def _withdrawn_since_claimed(connection: Connection, outbox_id: int) -> bool:
    """Whether a claimed message was withdrawn since the claim; read just before it is sent (only
    for the few kinds that can be withdrawn), and the read's transaction ended at once."""
    status = connection.execute(select(_OUTBOX.c.status).where(_OUTBOX.c.id == outbox_id)).scalar()
    connection.commit()
    return status == OutboxStatus.WITHDRAWN.value


def _by_id(row: Row) -> int:
    return row.id


def requeue_failed_messages(session: Session, business_date: date | None = None) -> int:
    """Failed outbox messages (of ``business_date``, or all) back to pending, due now, with their attempts
    reset, in the caller's transaction; returns how many.  Each keeps its Message-ID; a bounced message
    stays bounced.  They are found by their queue rows (the small partial index of failed ones)."""
    statement = (
        update(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.FAILED.value)
        .where(OutboxMessage.id.in_(select(_QUEUE.c.outbox_message_id).where(_QUEUE.c.failed)))
        # A refusal recorded on its ledger rows fails again unchanged: 'notices resend' after a correction.
        .where(
            ~exists().where(
                NoticeLedgerEntry.outbox_message_id == OutboxMessage.id, NoticeLedgerEntry.refused_reason.is_not(None)
            )
        )
        .values(status=OutboxStatus.PENDING.value, attempts=0, next_attempt_at=None)
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    )
    if business_date is not None:
        statement = statement.where(OutboxMessage.business_date == business_date)
    requeued = list(session.execute(statement).scalars())
    if requeued:
        session.execute(
            update(_QUEUE)
            .where(one_of(session, _QUEUE.c.outbox_message_id, requeued))
            .values(failed=False, next_attempt_at=None)
        )
    return len(requeued)


@dataclass(frozen=True)
class _Outcome:
    #: The message's new columns, ``id`` included (:func:`worker.store.db.update_by_id`).
    row: dict
    #: When it was decided.
    now: datetime
    #: The server's reply when the recipient bounced: the address is recorded too.
    bounce_reply: str | None = None
    #: ``(mailbox id, reason)`` for the message's ledger rows the renderer refused; a mailbox id
    #: of None names every ledger row of the message.  Written with the outcome.
    refusals: tuple[tuple[int | None, str], ...] = ()

    @property
    def needs_transaction(self) -> bool:
        """Whether more than the message's own row is written (then not in a group)."""
        return self.bounce_reply is not None or bool(self.refusals)


#: A ledger row's ``refused_reason``: the short code, a colon and the explanation.
def _ledger_reason(reason: str, detail: str) -> str:
    return f"{reason}: {detail}"[:1000]


def _write_outcomes(connection: Connection, group: list[dict]) -> None:
    """Commit a group of outcomes (``_Outcome.row``) in one statement, and empty the group.

    Never tried twice: if the write fails, the group's messages are sent again once
    their lease runs out (same Message-IDs).
    """
    rows = list(group)
    group.clear()
    write_outcome_rows(connection, rows)
    connection.commit()


def write_outcome_rows(executor: Session | Connection, rows: list[dict]) -> None:
    """The outcomes' two writes, in the caller's transaction: each message's row (a HOT update),
    and its queue row, deleted once the message is sent or bounced, else given the next attempt's
    time (deferred) or marked failed."""
    update_by_id(executor, _OUTBOX, rows)
    done = [row["id"] for row in rows if row["status"] in _DONE]
    if done:
        executor.execute(_done_statement(dialect_of(executor)), {"d_ids": done})
    update_by_id(
        executor,
        _QUEUE,
        [
            {
                "outbox_message_id": row["id"],
                "next_attempt_at": row["next_attempt_at"],
                "failed": row["status"] == OutboxStatus.FAILED.value,
            }
            for row in rows
            if row["status"] not in _DONE
        ],
        key="outbox_message_id",
    )


#: The outcomes after which a message leaves the queue.
_DONE = frozenset((OutboxStatus.SENT.value, OutboxStatus.BOUNCED.value))


@functools.cache
def _done_statement(dialect: Dialect):
    return delete(_QUEUE).where(one_of(dialect, _QUEUE.c.outbox_message_id, key="d_ids"))


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
        outcome_group: int = 1,
    ):
        self._sessions = session_factory
        self._mailer = mailer
        self._renderer = renderer
        self._clock = clock
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._outcome_group = outcome_group

    def deliver_due(
        self,
        only_ids: Iterable[int] | None = None,
        *,
        max_batches: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RelayResult:
        """Deliver every message due now (or only these ids), batch after batch.

        Each batch's messages leave the due set (sent, bounced, failed, or deferred
        to a later attempt), so the loop ends; with ``only_ids`` it ends once those are.
        ``progress`` is called with the number of messages handled after each batch.
        """
        total = RelayResult()
        only = [int(outbox_id) for outbox_id in only_ids] if only_ids is not None else None
        batches = 0
        with self._sessions() as session:
            engine = session.get_bind()
        with quick_commit_connection(engine) as connection:
            while max_batches is None or batches < max_batches:
                messages = claim_messages(connection, self._clock(), self._batch_size, only)
                connection.commit()
                if not messages:
                    break
                batches += 1
                if only is not None:  # handled now: the next claims need not look at them again
                    claimed = {message.id for message in messages}
                    only = [outbox_id for outbox_id in only if outbox_id not in claimed]
                delivered = self._deliver(messages, connection)
                total.add(delivered)
                if progress:
                    progress(delivered.handled)
        return total

    def _deliver(self, messages: list[Row], connection: Connection) -> RelayResult:
        """Send the claimed messages, committing their outcomes in groups of ``outcome_group``.

        A group is written on the relay's connection once it is full, before a
        bounce or a refusal, and at the end of the batch, also when the batch
        stops on an exception.  A bounce also records the address, and a
        refusal its ledger rows' reason, in one transaction with the outcome.
        """
        result = RelayResult()
        group: list[dict] = []
        try:
            for row in messages:
                if row.kind in WITHDRAWABLE_KINDS and _withdrawn_since_claimed(connection, row.id):
                    continue  # what it says stopped being true after the claim (worker.mail.queue.withdraw_emails)
                outcome = self._deliver_one(row, result)
                if not outcome.needs_transaction:
                    group.append(outcome.row)
                    if len(group) >= self._outcome_group:
                        _write_outcomes(connection, group)
                    continue
                if group:
                    _write_outcomes(connection, group)
                with self._sessions() as session, session.begin():
                    if outcome.bounce_reply is not None:
                        self._record_bounce(session, row.to_address, outcome.now, outcome.bounce_reply)
                    self._record_refusals(session, row.id, outcome.refusals)
                    write_outcome_rows(session, [outcome.row])
        finally:
            if group:  # what was sent is recorded even when the batch stops early
                _write_outcomes(connection, group)
        return result

    def _deliver_one(self, message: Row, result: RelayResult) -> _Outcome:
        """Render and send one message; returns what to commit (nothing is written here)."""
        now = self._clock()
        attempts = message.attempts + 1
        left_out: tuple[RefusedMailbox, ...] = ()

        def outcome(status: str, next_attempt_at=None, error: str | None = None, bounce_reply=None) -> _Outcome:
            return _Outcome(
                {
                    "id": message.id,
                    "status": status,
                    "attempts": attempts,
                    "next_attempt_at": next_attempt_at,
                    "last_error": error[:1000] if error is not None else None,
                    "sent_at": now if status == OutboxStatus.SENT.value else None,
                },
                now,
                bounce_reply,
                self._left_out(message, left_out, result, final=status != OutboxStatus.PENDING.value),
            )

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
            left_out = email.refused
            self._mailer.send(email.sender, email.recipient, email.as_bytes())
        except DeliveryError as error:
            if error.permanent:
                result.bounced += 1
                result.errors["bounced"] += 1
                log.warning("outbox %s bounced (%s)", message.id, error.smtp_code)
                return outcome(OutboxStatus.BOUNCED.value, error=str(error), bounce_reply=str(error))
            result.errors["transient"] += 1
            log.info("outbox %s deferred after attempt %s (%s)", message.id, attempts, error.smtp_code)
            return self._defer(outcome, attempts, now, str(error), result)
        except ValueError as error:
            # The stored data can never render (the renderer refuses it): retrying is pointless.
            left_out = ()  # the whole email is refused: its own reasons say why
            return self._refused_whole(message, error, outcome, result)
        except Exception as error:  # a template bug must not stop the other messages; retried after a fix
            result.errors["render"] += 1
            log.exception("outbox %s could not be rendered", message.id)
            return self._defer(outcome, attempts, now, f"{type(error).__name__}: {error}", result)
        result.sent += 1
        result.sent_by_kind[(message.kind, message.stage)] += 1
        return outcome(OutboxStatus.SENT.value)

    @staticmethod
    def _left_out(
        message: Row, left_out: tuple[RefusedMailbox, ...], result: RelayResult, *, final: bool
    ) -> tuple[tuple[int | None, str], ...]:
        """The ledger reasons of the mailboxes left out of this email; counted and logged when the
        message's outcome is final (a deferred message is counted when it is sent, once)."""
        if final:
            for mailbox in left_out:
                result.refused[mailbox.reason] += 1
                log.warning(
                    "outbox %s: mailbox %s left out of the email, refused by the renderer: %s",
                    message.id,
                    mailbox.mailbox_id,
                    mailbox.detail,
                )
        return tuple(
            (mailbox.mailbox_id, _ledger_reason(mailbox.reason, f"left out of the email: {mailbox.detail}"))
            for mailbox in left_out
            if mailbox.mailbox_id is not None
        )

    @staticmethod
    def _refused_whole(message: Row, error: ValueError, outcome, result: RelayResult) -> _Outcome:
        """The email cannot be sent at all (its reference address, or every mailbox, refused):
        failed now, never retried, the reason on the message and on each of its ledger rows."""
        reason = refusal_reason(error)
        result.failed += 1
        result.errors["invalid"] += 1
        result.refused_emails[reason] += 1
        log.error("outbox %s refused by the renderer: %s", message.id, error)
        mailboxes = getattr(error, "mailboxes", ())
        if mailboxes:  # every mailbox refused: each with its own reason
            for mailbox in mailboxes:
                result.refused[mailbox.reason] += 1
            refusals = tuple(
                (mailbox.mailbox_id, _ledger_reason(mailbox.reason, f"left out of the email: {mailbox.detail}"))
                for mailbox in mailboxes
                if mailbox.mailbox_id is not None
            )
        else:
            raw_mailboxes = message.context.get("mailboxes") if isinstance(message.context, dict) else None
            result.refused[reason] += len(raw_mailboxes) if isinstance(raw_mailboxes, list) else 0
            refusals = ((None, _ledger_reason(reason, f"the email was refused: {error}")),)
        failed = outcome(OutboxStatus.FAILED.value, error=f"refused by the renderer: {error}")
        return _Outcome(failed.row, failed.now, None, refusals)

    def _defer(self, outcome, attempts: int, now: datetime, error: str, result: RelayResult) -> _Outcome:
        if attempts >= self._max_attempts:
            result.failed += 1
            return outcome(OutboxStatus.FAILED.value, error=error)
        result.deferred += 1
        return outcome(OutboxStatus.PENDING.value, next_attempt_at=now + retry_delay(attempts), error=error)

    @staticmethod
    def _record_refusals(session: Session, outbox_id: int, refusals: tuple[tuple[int | None, str], ...]) -> None:
        for mailbox_id, reason in refusals:
            statement = (
                update(NoticeLedgerEntry)
                .where(NoticeLedgerEntry.outbox_message_id == outbox_id)
                .values(refused_reason=reason)
                .execution_options(synchronize_session=False)
            )
            if mailbox_id is not None:
                statement = statement.where(NoticeLedgerEntry.mailbox_id == mailbox_id)
            session.execute(statement)

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
