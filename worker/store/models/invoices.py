"""Electronic invoices with their yearly counters, and the events the PEC platform must act on."""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum

from sqlalchemy import JSON, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from worker.store.models.base import Base, Id, UTCDateTime

# -- Electronic invoices ---------------------------------------------------------------------


class InvoiceStatus(str, Enum):
    ISSUED = "issued"  # numbered, ready to export
    WAITING = "waiting"  # paid, but the seller settings or the buyer's data are missing


class InvoiceCounter(Base):
    """The last invoice number of a calendar year (Europe/Rome): locked by each issue until its commit."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer)


class Invoice(Base):
    """An electronic invoice (TD01) or credit note (TD04), written in the payment's transaction.

    It keeps what renders its XML again identically (the buyer as invoiced, the lines and the
    totals); the seller's data are the settings'.  ``(year, number)`` is unique and gapless.
    """

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("year", "number", name="uq_invoices_year_number"),
        Index(
            "ix_invoices_waiting",
            "id",
            postgresql_where=text("status = 'waiting'"),
            sqlite_where=text("status = 'waiting'"),
        ),
        # The documents issued and not yet numbered (number_pending_invoices): a few, read by every charge batch.
        Index(
            "ix_invoices_unnumbered",
            "id",
            postgresql_where=text("status = 'issued' AND number IS NULL"),
            sqlite_where=text("status = 'issued' AND number IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: TD01 or TD04.
    kind: Mapped[str] = mapped_column(String(4))
    status: Mapped[str] = mapped_column(String(10))
    #: Why a waiting invoice waits (comma-separated words: ``seller_settings``, ``billing_address``, ``tax_id``).
    waiting_reason: Mapped[str | None] = mapped_column(String(100))
    year: Mapped[int | None] = mapped_column(Integer)
    number: Mapped[int | None] = mapped_column(Integer)
    #: The number as printed (``Numero``), e.g. ``123/2026``.
    document_number: Mapped[str | None] = mapped_column(String(20))
    issued_on: Mapped[date | None] = mapped_column(Date, index=True)
    #: One invoice per paid order and per successful charge.
    order_id: Mapped[int | None] = mapped_column(ForeignKey("renewal_orders.id"), unique=True)
    charge_intent_id: Mapped[int | None] = mapped_column(ForeignKey("charge_intents.id"), unique=True)
    #: For a credit note: the invoice it corrects; ``refund_key`` names the refund (one note per refund).
    corrects_invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    refund_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    #: A mailbox it is about: a waiting invoice takes the buyer's data from its current holder.
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    payment_method: Mapped[str] = mapped_column(String(20))
    #: The amount paid (or refunded), VAT included: the document's total.
    paid_cents: Mapped[int] = mapped_column(Integer)
    #: The order number or the charge's idempotency key.
    reference: Mapped[str] = mapped_column(String(200))
    paid_on: Mapped[date] = mapped_column(Date)
    buyer: Mapped[dict] = mapped_column(JSON)
    lines: Mapped[list] = mapped_column(JSON)
    subtotal_cents: Mapped[int] = mapped_column(Integer)
    vat_cents: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- Platform events -----------------------------------------------------------------------


class EventStatus(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # refused by the platform (a 4xx), or retried for three days in vain


class PlatformEvent(Base):
    """One change the PEC platform must act on, written in the transaction of the change itself.

    ``event_key`` names what the event is about (its type, the mailbox and the order, charge or
    expiry cycle): unique, so a change written twice is one event.  ``webhook_id`` is the
    ``webhook-id`` header of every attempt, by which the platform drops a copy it already had.
    The events of one mailbox are delivered in ``id`` order (``worker.events.delivery``).
    """

    __tablename__ = "platform_events"
    __table_args__ = (
        Index(
            "ix_platform_events_pending",
            "mailbox_id",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # Failed events wait for an operator (``pec-renewal events retry``); few, and counted by the gauges.
        Index(
            "ix_platform_events_failed",
            "id",
            postgresql_where=text("status = 'failed'"),
            sqlite_where=text("status = 'failed'"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_key: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    #: The mailbox the event is about: its events go out one after the other.
    mailbox_id: Mapped[int] = mapped_column(Id)
    #: The body's ``data``.
    data: Mapped[dict] = mapped_column(JSON)
    #: When the change happened: the body's ``timestamp``.
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    business_date: Mapped[date] = mapped_column(Date, index=True)
    status: Mapped[str] = mapped_column(String(10), default=EventStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: When the next attempt may start (a retry's backoff, or a sender's lease); NULL: at once.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The first failed attempt since the event was written or requeued: retried for three days from it.
    retrying_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
