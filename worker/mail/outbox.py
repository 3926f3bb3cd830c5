"""The outbox relay: delivers queued emails at least once, with a stable Message-ID.

A relay claims a batch of due messages by pushing their ``next_attempt_at``
forward by a lease (compare-and-swap; ``SKIP LOCKED`` on PostgreSQL), so two
relays never send the same message at once, and a relay that dies only delays
its batch until the lease runs out.  Outcomes are committed in small groups (at
most ``outcome_group`` sends, ``PEC_RENEWAL_RELAY_OUTCOME_GROUP``; 1 commits each
before the next send) and at the end of every batch: a crash between an SMTP
``250`` and the commit of its group can repeat at most that group's messages,
each with the same Message-ID, and nothing is ever lost.

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

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import BigInteger, Row, any_, bindparam, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from worker.store.db import dialect_insert
from worker.mail.emails import EmailRenderer, RefusedMailbox, refusal_reason
from worker.mail.mailers import DeliveryError, Mailer
from worker.store.models import BouncedAddress, NoticeLedgerEntry, OutboxMessage, OutboxStatus

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

    def add(self, other: "RelayResult") -> None:
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
    session: Session, now: datetime, limit: int, only_ids: Iterable[int] | None = None
) -> list[int]:
    """Reserve up to ``limit`` due messages for this relay; returns their ids (see :func:`claim_messages`)."""
    return [row.id for row in claim_messages(session, now, limit, only_ids)]


def claim_messages(session: Session, now: datetime, limit: int, only_ids: Iterable[int] | None = None) -> list[Row]:
    """Reserve up to ``limit`` due messages for this relay; returns what the relay reads of them, by id.

    The lease is written and the rows read back by one ``UPDATE … RETURNING``.
    With ``only_ids``, the rows are found by primary key alone and their status
    is checked here.  On a peak day PostgreSQL combined the key with the status
    index, which holds every pending message (and the dead entries the leases
    leave), and read it whole at every claim: most of a relay's time on 200,000
    messages (bench/daily_peak.py).
    """
    if only_ids is None:
        ids = session.scalars(
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == OutboxStatus.PENDING.value,
                or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
            )
            .order_by(OutboxMessage.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    else:
        rows = session.execute(
            select(OutboxMessage.id, OutboxMessage.status, OutboxMessage.next_attempt_at)
            .where(id_in(session, list(only_ids)))
            .order_by(OutboxMessage.id)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [
            row.id
            for row in rows
            if row.status == OutboxStatus.PENDING.value and (row.next_attempt_at is None or row.next_attempt_at <= now)
        ][:limit]
    if not ids:
        return []
    claimed = session.execute(
        update(OutboxMessage)
        .where(id_in(session, list(ids)))
        .values(next_attempt_at=now + CLAIM_LEASE)
        .returning(*_MESSAGE_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(claimed, key=lambda row: row.id)


#: The claim on PostgreSQL as one statement of its own (autocommit, psycopg's ``RawCursor``):
#: what :func:`claim_messages` does in a transaction of three round trips, with the same
#: rules.  ``candidate`` locks the rows (skipping those another relay holds); only the due
#: ones among them get the lease.  Found by id, the rows are not searched by status in SQL
#: (see :func:`claim_messages`).  ``$1`` now, ``$2`` the lease's end, ``$3`` the limit,
#: ``$4`` the ids.
_CLAIM_SQL = """
WITH candidate AS MATERIALIZED (
    SELECT id, status, next_attempt_at FROM outbox_messages
    WHERE {where} ORDER BY id {limit} FOR UPDATE SKIP LOCKED
)
UPDATE outbox_messages SET next_attempt_at = $2
FROM (SELECT id FROM candidate
      WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
      ORDER BY id LIMIT $3) AS claimed
WHERE outbox_messages.id = claimed.id
RETURNING outbox_messages.id, kind, stage, language, to_address, message_id, context, attempts, status
"""
_CLAIM_DUE_SQL = _CLAIM_SQL.format(
    where="status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= $1)", limit="LIMIT $3"
)
_CLAIM_BY_ID_SQL = _CLAIM_SQL.format(where="id = ANY($4::bigint[])", limit="")


def claim_messages_on_postgresql(
    connection: psycopg.Connection, now: datetime, limit: int, only_ids: list[int] | None = None
) -> list[Any]:
    """:func:`claim_messages` on a psycopg connection in autocommit mode: one statement, which
    commits the leases itself.  Returns named tuples with the same fields, by id."""
    cursor = psycopg.RawCursor(connection, row_factory=namedtuple_row)
    if only_ids is None:
        cursor.execute(_CLAIM_DUE_SQL, [now, now + CLAIM_LEASE, limit], prepare=True)
    else:
        cursor.execute(_CLAIM_BY_ID_SQL, [now, now + CLAIM_LEASE, limit, only_ids], prepare=True)
    return sorted(cursor.fetchall(), key=_by_id)


def _by_id(row: Any) -> int:
    return row.id


def id_in(session: Session, ids: list[int]):
    """``outbox_messages.id`` is one of ``ids``: on PostgreSQL ``= ANY(array)``, one parameter.

    ``IN (...)`` sends one parameter per id, and psycopg parses a statement of
    more than 50 parameters afresh each time: about 0.1 ms per message for the
    claim and the read of a 200-message batch (bench/daily_peak.py).
    """
    if session.get_bind().dialect.name == "postgresql":
        return OutboxMessage.id == any_(bindparam("outbox_ids", ids, type_=postgresql.ARRAY(BigInteger)))
    return OutboxMessage.id.in_(ids)


#: What the relay reads of a claimed message.
_MESSAGE_COLUMNS = (
    OutboxMessage.id,
    OutboxMessage.kind,
    OutboxMessage.stage,
    OutboxMessage.language,
    OutboxMessage.to_address,
    OutboxMessage.message_id,
    OutboxMessage.context,
    OutboxMessage.attempts,
    OutboxMessage.status,
)

#: One message's outcome, as one statement.
_WRITE_OUTCOME = (
    update(OutboxMessage)
    .where(OutboxMessage.id == bindparam("o_id"))
    .values(
        status=bindparam("o_status"),
        attempts=bindparam("o_attempts"),
        next_attempt_at=bindparam("o_next_attempt_at"),
        last_error=bindparam("o_last_error"),
        sent_at=bindparam("o_sent_at"),
    )
)


#: The same, for psycopg's ``RawCursor`` (server-side placeholders, in this order).
_WRITE_OUTCOME_SQL = (
    "UPDATE outbox_messages SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4, sent_at = $5"
    " WHERE id = $6"
)
#: A group of outcomes as one statement: one array per column (in ``_WRITE_OUTCOME_ORDER``),
#: one row of ``unnest`` per message.  Per outcome, in a group of 16: 15 µs of the backend's
#: CPU and 11 µs of the relay's, against 28 and 18 for one statement each; a group of one
#: costs more this way (54 and 55), so a lone outcome takes the statement above
#: (/tmp measurement on a 400,000-row copy of the table, bench/RESULTS.md, stop 12).
_WRITE_OUTCOMES_SQL = """
UPDATE outbox_messages SET status = outcome.status, attempts = outcome.attempts,
    next_attempt_at = outcome.next_attempt_at, last_error = outcome.last_error, sent_at = outcome.sent_at
FROM unnest($1::varchar[], $2::integer[], $3::timestamptz[], $4::text[], $5::timestamptz[], $6::bigint[])
    AS outcome(status, attempts, next_attempt_at, last_error, sent_at, id)
WHERE outbox_messages.id = outcome.id
"""
_WRITE_OUTCOME_ORDER = ("o_status", "o_attempts", "o_next_attempt_at", "o_last_error", "o_sent_at", "o_id")


@dataclass(frozen=True)
class _Outcome:
    #: The parameters of ``_WRITE_OUTCOME`` (and ``o_now``, when it was decided).
    parameters: dict
    #: The server's reply when the recipient bounced: the address is recorded too.
    bounce_reply: str | None = None
    #: ``(mailbox id, reason)`` for the message's ledger rows the renderer refused; a mailbox id
    #: of None names every ledger row of the message.  Written with the outcome.
    refusals: tuple[tuple[int | None, str], ...] = ()

    @property
    def needs_session(self) -> bool:
        """Whether more than the message's own row is written (on PostgreSQL: not in a group)."""
        return self.bounce_reply is not None or bool(self.refusals)


#: A ledger row's ``refused_reason``: the short code, a colon and the explanation.
def _ledger_reason(reason: str, detail: str) -> str:
    return f"{reason}: {detail}"[:1000]


def _write_outcomes(cursor: psycopg.RawCursor, group: list[dict]) -> None:
    """Commit a group of outcomes (``_Outcome.parameters``) in one statement, and empty the group.

    Never tried twice: if the statement fails, the group's messages are sent again once
    their lease runs out (same Message-IDs).
    """
    if len(group) == 1:
        statement, values = _WRITE_OUTCOME_SQL, [group[0][name] for name in _WRITE_OUTCOME_ORDER]
    else:
        statement = _WRITE_OUTCOMES_SQL
        values = [[parameters[name] for parameters in group] for name in _WRITE_OUTCOME_ORDER]
    group.clear()
    cursor.execute(statement, values, prepare=True)


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
        with self._autocommit_connection() as autocommit:
            while max_batches is None or batches < max_batches:
                if autocommit is not None:
                    messages = claim_messages_on_postgresql(autocommit, self._clock(), self._batch_size, only)
                else:
                    with self._sessions() as session, session.begin():
                        messages = claim_messages(session, self._clock(), self._batch_size, only)
                if not messages:
                    break
                batches += 1
                delivered = self._deliver(messages, autocommit)
                total.add(delivered)
                if progress:
                    progress(delivered.handled)
        return total

    def _deliver(self, messages: list[Any], autocommit: psycopg.Connection | None) -> RelayResult:
        """Send the claimed messages, committing their outcomes in groups of ``outcome_group``.

        On PostgreSQL a group is one ``UPDATE`` on the relay's connection in autocommit mode
        (one round trip, one commit), written once the group is full, before a bounce or a
        refusal, and at the end of the batch, also when the batch stops on an exception.  A
        bounce also records the address, and a refusal its ledger rows' reason, in one
        transaction with the outcome.  Elsewhere each outcome is committed on its own, before
        the next send.
        """
        result = RelayResult()
        # Straight to psycopg, as a prepared statement with its own placeholders:
        # SQLAlchemy's execute, and psycopg's conversion of named parameters, cost
        # more than the statement's own work here.
        cursor = psycopg.RawCursor(autocommit) if autocommit is not None else None
        group: list[dict] = []
        try:
            for row in messages:
                outcome = self._deliver_one(row, result)
                if cursor is not None and not outcome.needs_session:
                    group.append(outcome.parameters)
                    if len(group) >= self._outcome_group:
                        _write_outcomes(cursor, group)
                    continue
                if group:
                    _write_outcomes(cursor, group)
                with self._sessions() as session, session.begin():
                    if session.get_bind().dialect.name == "postgresql":
                        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
                    if outcome.bounce_reply is not None:
                        self._record_bounce(session, row.to_address, outcome.parameters["o_now"], outcome.bounce_reply)
                    self._record_refusals(session, row.id, outcome.refusals)
                    session.execute(_WRITE_OUTCOME, outcome.parameters)
        finally:
            if group:  # what was sent is recorded even when the batch stops early
                _write_outcomes(cursor, group)
        return result

    @contextmanager
    def _autocommit_connection(self) -> Iterator[Any | None]:
        """On PostgreSQL, a pooled connection (the psycopg connection itself) whose every
        statement commits on its own, without waiting for the disk (``synchronous_commit``
        off): a database crash may forget the last leases and outcomes, which resends those
        messages (same Message-ID), never loses one.  None elsewhere."""
        with self._sessions() as session:
            engine = session.get_bind()
        if engine.dialect.name != "postgresql":
            yield None
            return
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("SET synchronous_commit TO OFF")
            try:
                yield connection.connection.driver_connection
            finally:
                # The pool hands this connection to other work next: give it its default back.
                try:
                    connection.exec_driver_sql("RESET synchronous_commit")
                except Exception:
                    connection.invalidate()

    def _deliver_one(self, message: Row, result: RelayResult) -> _Outcome:
        """Render and send one message; returns what to commit (nothing is written here)."""
        now = self._clock()
        attempts = message.attempts + 1
        left_out: tuple[RefusedMailbox, ...] = ()

        def outcome(status: str, next_attempt_at=None, error: str | None = None, bounce_reply=None) -> _Outcome:
            return _Outcome(
                {
                    "o_id": message.id,
                    "o_status": status,
                    "o_attempts": attempts,
                    "o_next_attempt_at": next_attempt_at,
                    "o_last_error": error[:1000] if error is not None else None,
                    "o_sent_at": now if status == OutboxStatus.SENT.value else None,
                    "o_now": now,
                },
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
                    message.id, mailbox.mailbox_id, mailbox.detail,
                )  # fmt: skip
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
        return _Outcome(failed.parameters, None, refusals)

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
