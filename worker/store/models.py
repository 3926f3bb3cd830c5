"""The database schema (SQLAlchemy 2).  Migrations live in ``worker/store/migrations``.

The same models run on SQLite (the embedded default) and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import Enum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from worker.rules.auto_renew import ChargeStatus
from worker.rules.vocabulary import HolderKind, Plan  # noqa: F401 (the columns' words, defined once there)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on both databases (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class OutboxStatus(str, Enum):
    PENDING = "pending"
    SENT = "sent"
    BOUNCED = "bounced"
    FAILED = "failed"  # transient errors until the attempts ran out
    WITHDRAWN = "withdrawn"  # no longer true before it was sent (an order's confirmation once it was paid)


class Account(Base):
    """A customer login; it can own many mailboxes."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    login: Mapped[str] = mapped_column(String(254), unique=True)


class Holder(Base):
    """The "Dati intestatario": who holds a mailbox, and where notices go."""

    __tablename__ = "holders"
    __table_args__ = (UniqueConstraint("account_id", "holder_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    #: A digest of the fields below, so identical holder data is stored once per account.
    holder_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    tax_code: Mapped[str | None] = mapped_column(String(16))
    vat_number: Mapped[str | None] = mapped_column(String(11))
    reference_email: Mapped[str] = mapped_column(String(254))
    postal_address: Mapped[str | None] = mapped_column(String(300))
    #: E-invoicing: a 7-character SDI recipient code, a PEC address, or a
    #: public administration's 6-character office code (with CIG and CUP).
    sdi_code: Mapped[str | None] = mapped_column(String(7))
    einvoice_pec: Mapped[str | None] = mapped_column(String(254))
    office_code: Mapped[str | None] = mapped_column(String(6))
    cig: Mapped[str | None] = mapped_column(String(10))
    cup: Mapped[str | None] = mapped_column(String(15))
    #: The billing address an electronic invoice needs (all set or all NULL; the country is ISO 3166 alpha-2).
    billing_address: Mapped[str | None] = mapped_column(String(60))
    billing_postcode: Mapped[str | None] = mapped_column(String(10))
    billing_city: Mapped[str | None] = mapped_column(String(60))
    billing_province: Mapped[str | None] = mapped_column(String(2))
    billing_country: Mapped[str | None] = mapped_column(String(2))

    account: Mapped[Account] = relationship()


class Domain(Base):
    """A customer domain; its mailboxes (name@pec.theirdomain.it) share its expiry."""

    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    expires_on: Mapped[date] = mapped_column(Date)


class Mailbox(Base):
    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    address: Mapped[str] = mapped_column(String(254), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    #: A copy of the holder's reference address, where every notice goes: the
    #: daily scan groups the due rows by it without a lookup per row.  Holder
    #: rows never change in place (new data is a new row), so it is set
    #: wherever ``holder_id`` is.
    reference_email: Mapped[str] = mapped_column(String(254))
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domains.id"), index=True)
    plan: Mapped[str] = mapped_column(String(16))
    extra_space_gb: Mapped[int] = mapped_column(Integer, default=0)
    extra_archive_gb: Mapped[int] = mapped_column(Integer, default=0)
    used_space_mb: Mapped[int] = mapped_column(Integer, default=0)
    #: For a mailbox on a domain, a copy of the domain's expiry, kept in step.  Indexed for the
    #: day's platform events (the mailboxes that expired or were deleted in the last days).
    expires_on: Mapped[date] = mapped_column(Date, index=True)
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=False)
    payment_method: Mapped[str | None] = mapped_column(String(200))
    #: The last day of the stored card's expiry month.
    card_expires_on: Mapped[date | None] = mapped_column(Date)
    renewal_years: Mapped[int] = mapped_column(Integer, default=1)
    promo: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str] = mapped_column(String(2), default="it")
    #: The holder opted out of the expiry reminders for the cycle ending on this date (the
    #: ``List-Unsubscribe`` link, or "Non intendo rinnovare"); once ``expires_on`` moves on
    #: (a renewal, the next cycle) it no longer applies.  Written only by the holder's choice,
    #: never by the scan; not indexed.  ``_at`` and ``_via`` say when and how.
    reminders_opt_out_for: Mapped[date | None] = mapped_column(Date)
    reminders_opt_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reminders_opt_out_via: Mapped[str | None] = mapped_column(String(16))

    account: Mapped[Account] = relationship()
    holder: Mapped[Holder] = relationship()
    domain: Mapped[Domain | None] = relationship()
    schedule: Mapped[MailboxSchedule | None] = relationship(
        back_populates="mailbox", cascade="all, delete-orphan", passive_deletes=True
    )
    #: The mailbox's ``MailboxSchedule.next_action_on``, read and set on its schedule row (created
    #: when first set).  For the ORM's single rows; statements name ``MailboxSchedule`` itself.
    next_action_on: AssociationProxy[date | None] = association_proxy(
        "schedule", "next_action_on", creator=lambda on: MailboxSchedule(next_action_on=on)
    )


class MailboxSchedule(Base):
    """When the daily scan must next look at a mailbox: one narrow row per mailbox.

    Apart from ``mailboxes`` so that a day's churn stays off the wide row: the
    scan, a notice batch, a charge and a registered payment move the date, and
    each move of an indexed column writes a new row version and an entry into
    every index of its table.  Here that is a 40-byte row and two small
    indexes (the key and ``next_action_on``), where ``mailboxes`` has six, the
    address's unique index among them.  The scan reads only rows with
    ``next_action_on <= today``.  NULL: never again (a deleted mailbox).

    Every writer of a mailbox writes its schedule row with it (the import, the
    demo); a mailbox without one is never looked at, as with NULL.
    """

    __tablename__ = "mailbox_schedule"
    __table_args__ = (
        # Autovacuum after every peak day, not after 20 % of the fleet has moved (see 0009's docstring
        # and docs/operations.md); a free tenth of each page for the moves' new row versions.
        {
            "postgresql_with": {
                "fillfactor": "90",
                "autovacuum_vacuum_scale_factor": "0.01",
                "autovacuum_analyze_scale_factor": "0.02",
            }
        },
    )

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True)
    next_action_on: Mapped[date | None] = mapped_column(Date, index=True)

    mailbox: Mapped[Mailbox] = relationship(back_populates="schedule")


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


class DailyRun(Base):
    """One row per business date: the scan for a date is claimed once."""

    __tablename__ = "daily_runs"

    business_date: Mapped[date] = mapped_column(Date, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[dict | None] = mapped_column(JSON)


class WorkerState(Base):
    """Small facts the worker keeps about itself, such as the schedule its dates were computed with."""

    __tablename__ = "worker_state"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# -- Renewal orders and payments ----------------------------------------------------------


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


# -- Auto-renew charges ------------------------------------------------------------


class ChargeIntent(Base):
    """One auto-renew charge attempt, written and committed before the gateway is called.

    ``(mailbox_id, cycle_expires_on, attempt)`` is unique, and so is the
    idempotency key derived from it (``renewal:{mailbox}:{cycle}:{attempt}``):
    an attempt is charged at most once whatever crashes or races happen.
    """

    __tablename__ = "charge_intents"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "cycle_expires_on", "attempt", name="uq_charge_intents_attempt"),
        Index("ix_charge_intents_unresolved", "status", postgresql_where=text("status IN ('started', 'unknown')")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    #: The expiry date the charge renews from: it names the cycle.
    cycle_expires_on: Mapped[date] = mapped_column(Date)
    #: 1 for the charge 7 days before expiry, then one number per retry slot.
    attempt: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    #: The stored token charged (sandbox tokens are not secrets; logs show only ``mask_token``).
    payment_method: Mapped[str] = mapped_column(String(200))
    years: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), default=ChargeStatus.STARTED.value)
    #: The gateway's charge id, once known.
    reference: Mapped[str | None] = mapped_column(String(200))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    business_date: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- What the gateways tell us: webhook events and refunds ------------------------------------


class GatewayEvent(Base):
    """A webhook event a gateway sent us, verified and processed once.

    ``(gateway, event_id)`` is unique and the row is written in the same
    transaction as the event's effect (a registered payment, a refund to make, a
    dispute): a replayed event finds its row and changes nothing.
    """

    __tablename__ = "gateway_events"
    __table_args__ = (UniqueConstraint("gateway", "event_id", name="uq_gateway_events_event"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(64))
    #: What processing it did: registered, already_registered, amount_mismatch, refund_due, dispute, ...
    outcome: Mapped[str] = mapped_column(String(32), index=True)
    order_number: Mapped[str | None] = mapped_column(String(24), index=True)
    #: The gateway's id of the money movement: PaymentIntent (Stripe), capture (PayPal).
    payment_reference: Mapped[str | None] = mapped_column(String(200), index=True)
    amount_cents: Mapped[int | None] = mapped_column(Integer)
    currency: Mapped[str | None] = mapped_column(String(3))
    #: A short, token-free explanation for the operator.
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


#: The states of a refund whose gateway answer is not recorded yet: asked again with the same key.
REFUND_OPEN_STATES = ("started", "unknown")


class GatewayRefund(Base):
    """A refund we asked a gateway for, written before the gateway is called ("intent, act, record").

    ``idempotency_key`` is unique and sent as the gateway's own idempotency key,
    so a refund left ``started`` (a crash, a lost answer) is asked again with the
    same key and never refunds twice.
    """

    __tablename__ = "gateway_refunds"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("renewal_orders.id"), index=True)
    #: The gateway's id of the payment refunded: PaymentIntent (Stripe), capture (PayPal), sandbox charge.
    payment_reference: Mapped[str] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    #: automatic (a double payment, a mailbox renewed meanwhile) or requested (``payments refund``).
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(200))
    #: started, succeeded, pending (the gateway is still working on it), failed.
    status: Mapped[str] = mapped_column(String(16), index=True)
    #: The gateway's refund id, once known.
    refund_reference: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- The sandbox gateway's own record -------------------------------------------------------


class SandboxCharge(Base):
    """The sandbox gateway's own record of every charge attempt, as a real gateway's dashboard would keep."""

    __tablename__ = "sandbox_charges"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    payment_method: Mapped[str] = mapped_column(String(200))
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    outcome: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class SandboxChallenge(Base):
    """The sandbox gateway's 3-D Secure challenges: one per sandbox charge that asked for the
    holder's authentication and was brought back on session, with the holder's answer.

    ``public_id`` is the challenge page's address (random, unguessable); ``charge_reference``
    names the ``sandbox_charges`` row it authenticates; ``return_path`` is where the page sends
    the holder once answered (a path of the link handler, never another host).  ``status``:
    ``pending``, then ``approved`` or ``refused`` with ``decided_at``.
    """

    __tablename__ = "sandbox_challenges"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(64), unique=True)
    charge_reference: Mapped[str] = mapped_column(String(64), index=True)
    return_path: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SandboxMethod(Base):
    """A payment method the sandbox gateway stores for off-session charges, as Stripe keeps a PaymentMethod.

    Created by the sandbox's checkout (the card or PayPal account of a successful payment, kept for
    auto-renew) and by its page for a new method; ``method_id`` (``pm_sbx_…``, ``paypal_sbx_…``) is
    what the mailbox stores and what ``charge`` takes.  ``behaviour`` is the test token it was made
    from: a charge of the stored method answers as that test card would.
    """

    __tablename__ = "sandbox_methods"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    method_id: Mapped[str] = mapped_column(String(64), unique=True)
    behaviour: Mapped[str] = mapped_column(String(200))
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    #: The charge whose method was kept (its idempotency key), or None for the page of a new method.
    source_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SandboxWebhook(Base):
    """An event the sandbox gateway sends to our own ``POST /webhooks/sandbox``, as Stripe sends its
    webhooks: written with the sandbox's record of the charge or refund (same transaction), posted
    afterwards, signed by the Standard Webhooks specification, at least once, by the sender of the
    platform's events (:class:`worker.events.delivery.EventSender`, these columns being its own).

    The events of one charge (its payment, then its refunds) go out in ``id`` order (``stream_id``:
    the sandbox's charge row).
    """

    __tablename__ = "sandbox_webhooks"
    __table_args__ = (
        Index(
            "ix_sandbox_webhooks_pending",
            "stream_id",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    stream_id: Mapped[int] = mapped_column(Id)
    data: Mapped[dict] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retrying_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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
