"""The outbox and the notice ledger: emails to send, their queue, the notices queued and the bounced addresses."""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from worker.store.models.base import Base, Id, UTCDateTime


class OutboxStatus(str, Enum):
    PENDING = "pending"
    SENT = "sent"
    BOUNCED = "bounced"
    FAILED = "failed"  # transient errors until the attempts ran out
    WITHDRAWN = "withdrawn"  # no longer true before it was sent (an order's confirmation once it was paid)


class OutboxMessage(Base):
    """One email to send, written in the same transaction as its ledger rows.

    It keeps the data to render, not the rendered text, so the relay renders
    with the current templates and signs fresh links; tokens are never stored.
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (
        # No index names a column that the relay's outcome changes (status, attempts, next_attempt_at,
        # last_error, sent_at), and half of each page is left free: the outcome's update is
        # then HOT, a new row version on the same page and no index entry.  What is still to be
        # sent is found in ``outbox_queue``.
        {"postgresql_with": {"fillfactor": "50"}},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: The Message-ID header, derived from the ledger keys the message carries.
    message_id: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    stage: Mapped[str] = mapped_column(String(8))
    language: Mapped[str] = mapped_column(String(2))
    #: Not indexed: nothing looks messages up by address, and every index costs each of a
    #: message's three writes (the insert, the claim's lease, the outcome).
    to_address: Mapped[str] = mapped_column(String(254))
    business_date: Mapped[date] = mapped_column(Date, index=True)
    context: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    #: Its row in the queue while it is pending or failed (None once sent or bounced).
    queue: Mapped[OutboxQueueEntry | None] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class OutboxQueueEntry(Base):
    """A message still to be sent (or failed, waiting for ``pec-renewal outbox retry``): one narrow row.

    The relay's claim leases this row (``next_attempt_at`` moves by the lease) and
    its outcome deletes it (sent, bounced), gives it the next attempt's time
    (deferred) or marks it ``failed``; the message's own wide row gets the
    outcome's columns in the same transaction, a HOT update.  Written by
    :mod:`worker.mail.queue` with the message.  NULL ``next_attempt_at``: due
    now, never tried.
    """

    __tablename__ = "outbox_queue"
    __table_args__ = (
        # Failed messages are few; the gauges and the retry find them here.
        Index(
            "ix_outbox_queue_failed", "outbox_message_id", postgresql_where=text("failed"), sqlite_where=text("failed")
        ),
        # Tiny and churning: every row is written three times and deleted within minutes (docs/operations.md).
        {
            "postgresql_with": {
                "fillfactor": "70",
                "autovacuum_vacuum_scale_factor": "0.0",
                "autovacuum_vacuum_threshold": "5000",
                "autovacuum_analyze_scale_factor": "0.0",
                "autovacuum_analyze_threshold": "5000",
            }
        },
    )

    outbox_message_id: Mapped[int] = mapped_column(
        Id, ForeignKey("outbox_messages.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    failed: Mapped[bool] = mapped_column(Boolean, default=False)


class NoticeLedgerEntry(Base):
    """One row per (mailbox, expiry cycle, stage): the proof a notice was queued."""

    __tablename__ = "notice_ledger"
    __table_args__ = (UniqueConstraint("mailbox_id", "cycle_expires_on", "stage", name="uq_notice_ledger_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: The mailbox, by its schedule row (one per mailbox, deleted with it): the key check of each
    #: new ledger row then lands on the row its notice batch has locked and moves anyway, not on
    #: the wide ``mailboxes`` row, which a peak day would otherwise lock (a WAL record each, and
    #: a full-page image of each page touched) without changing it.
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox_schedule.mailbox_id", ondelete="CASCADE"))
    #: The expiry date the notice was about: it names the cycle.
    cycle_expires_on: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(40))
    business_date: Mapped[date] = mapped_column(Date, index=True)
    outbox_message_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_messages.id"), index=True)
    #: Set when the renderer refused this mailbox's data (its address, say): a short code, a
    #: colon and the explanation.  The mailbox was left out of its email, or the whole email was
    #: refused (its reference address); NULL otherwise.
    refused_reason: Mapped[str | None] = mapped_column(Text)


class BouncedAddress(Base):
    """A reference address that an SMTP server refused permanently (5xx)."""

    __tablename__ = "bounced_addresses"

    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    first_bounced_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_bounced_at: Mapped[datetime] = mapped_column(UTCDateTime)
    bounces: Mapped[int] = mapped_column(Integer, default=1)
    last_reply: Mapped[str | None] = mapped_column(Text)
