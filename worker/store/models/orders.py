"""Manual renewal orders, their lines (one per mailbox) and their registered payments."""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from worker.store.models.base import Base, Id, UTCDateTime
from worker.store.models.fleet import Account, Holder, Mailbox


class OrderStatus(str, Enum):
    DRAFT = "draft"
    AWAITING_PAYMENT = "awaiting_payment"  # "in attesa di pagamento"
    PAID = "paid"
    CANCELLED = "cancelled"  # by the holder, or by the support desk
    LAPSED = "lapsed"  # still unpaid on its mailboxes' deletion date: closed by the daily run


#: The statuses of an order that holds its link's cycle: a cancelled or lapsed order does not, and a
#: new order of the same link and cycle may then be started.
LIVE_ORDER_STATUSES = (OrderStatus.DRAFT.value, OrderStatus.AWAITING_PAYMENT.value, OrderStatus.PAID.value)
#: The statuses of an order that may still be paid, changed or cancelled.
OPEN_ORDER_STATUSES = (OrderStatus.DRAFT.value, OrderStatus.AWAITING_PAYMENT.value)


class OrderOrigin(str, Enum):
    LINK = "link"  # started by the holder from a Rinnova link
    AUTO_RENEW_FAILED = "auto_renew_failed"  # left unpaid by a failed auto-renew charge


class RenewalOrder(Base):
    """A manual renewal order of one or more mailboxes, from a signed link to its registered payment.

    ``(link_target, link_target_id, link_cycle)`` is the link it was started
    from (mailbox or account, and the expiry cycle): unique among the live
    orders (draft, awaiting payment, paid), so a second POST of the same link
    finds the same order, while a cancelled or lapsed order leaves the link
    free for a new one.
    """

    __tablename__ = "renewal_orders"
    __table_args__ = (
        Index(
            "uq_renewal_orders_live_link",
            "link_target",
            "link_target_id",
            "link_cycle",
            unique=True,
            postgresql_where=text("status IN ('draft', 'awaiting_payment', 'paid')"),
            sqlite_where=text("status IN ('draft', 'awaiting_payment', 'paid')"),
        ),
        # The daily run's lapse reads only the open orders.
        Index(
            "ix_renewal_orders_open",
            "id",
            postgresql_where=text("status IN ('draft', 'awaiting_payment')"),
            sqlite_where=text("status IN ('draft', 'awaiting_payment')"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: Opaque, for URLs (never the link token).
    public_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: Human-readable, given at confirmation: ``PEC-2027-000123``.
    order_number: Mapped[str | None] = mapped_column(String(24), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=OrderStatus.DRAFT.value)
    origin: Mapped[str] = mapped_column(String(20), default=OrderOrigin.LINK.value)
    link_target: Mapped[str] = mapped_column(String(1))
    link_target_id: Mapped[int] = mapped_column(Id)
    link_cycle: Mapped[date] = mapped_column(Date)
    language: Mapped[str] = mapped_column(String(2), default="it")
    #: The holder data confirmed or edited at step 2 (``HolderData`` fields); NULL until then.
    holder_data: Mapped[dict | None] = mapped_column(JSON)
    #: Step 1 done: the plans and extras of the lines were confirmed.
    mailboxes_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    payment_method: Mapped[str | None] = mapped_column(String(20))
    years: Mapped[int | None] = mapped_column(Integer)
    terms_accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The specific approval of the clauses of artt. 1341-1342 c.c. (``UNFAIR_TERMS_CLAUSES``), given
    #: with the terms at step 4.
    unfair_terms_approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The totals, set when the payment is chosen and fixed at confirmation.
    subtotal_cents: Mapped[int | None] = mapped_column(Integer)
    vat_cents: Mapped[int | None] = mapped_column(Integer)
    total_cents: Mapped[int | None] = mapped_column(Integer)
    #: Gateway checkout attempts (card / PayPal): part of the idempotency key ``order:{id}:{n}``.
    gateway_attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The state of the latest gateway attempt: "started" (intent committed), a ChargeOutcome value, or NULL.
    #: "started" or "unknown" is reconciled with ``gateway.lookup`` before anything else is charged.
    gateway_state: Mapped[str | None] = mapped_column(String(32))
    #: The card / PayPal token of the latest gateway attempt (what a reconciled charge was made with).
    gateway_token: Mapped[str | None] = mapped_column(String(200))
    #: How many times the method changed after confirmation: each change re-sends the
    #: order-confirmation as a new message (re-send number 1, 2, …), so each can be withdrawn.
    method_changes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    account: Mapped[Account] = relationship()
    holder: Mapped[Holder] = relationship()
    lines: Mapped[list[RenewalOrderLine]] = relationship(
        back_populates="order", order_by="RenewalOrderLine.id", cascade="all, delete-orphan"
    )
    payments: Mapped[list[Payment]] = relationship(back_populates="order", order_by="Payment.id")


class RenewalOrderLine(Base):
    """One mailbox of an order: what it renews from, and the plan and extras it will have."""

    __tablename__ = "renewal_order_lines"
    __table_args__ = (UniqueConstraint("order_id", "mailbox_id", name="uq_renewal_order_lines_mailbox"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("renewal_orders.id", ondelete="CASCADE"), index=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"), index=True)
    #: The expiry the renewal counts from; registration refuses if the mailbox's expiry moved since.
    old_expires_on: Mapped[date] = mapped_column(Date)
    old_plan: Mapped[str] = mapped_column(String(16))
    #: Whether the mailbox is renewed by this order (an account order may leave some out).
    selected: Mapped[bool] = mapped_column(Boolean, default=True)
    plan: Mapped[str] = mapped_column(String(16))
    extra_space_gb: Mapped[int] = mapped_column(Integer, default=0)
    extra_archive_gb: Mapped[int] = mapped_column(Integer, default=0)
    archive_deletion_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    #: This line's price for the order's years, VAT excluded (set with the totals).
    price_cents: Mapped[int | None] = mapped_column(Integer)
    #: The expiry after the registered payment.
    new_expires_on: Mapped[date | None] = mapped_column(Date)

    order: Mapped[RenewalOrder] = relationship(back_populates="lines")
    mailbox: Mapped[Mailbox] = relationship()


class Payment(Base):
    """A registered payment of an order.  ``(order_id, reference)`` is unique: registering twice registers once."""

    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("order_id", "reference", name="uq_payments_order_reference"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("renewal_orders.id"), index=True)
    method: Mapped[str] = mapped_column(String(20))
    amount_cents: Mapped[int] = mapped_column(Integer)
    #: The bank reference (CRO/TRN or the statement's text), the slip's number, or the gateway's charge id.
    reference: Mapped[str] = mapped_column(String(200))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    business_date: Mapped[date] = mapped_column(Date)

    order: Mapped[RenewalOrder] = relationship(back_populates="payments")
