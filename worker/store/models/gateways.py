"""What is charged and what the gateways tell us: auto-renew charge intents, webhook events, refunds,
and the sandbox gateway's own tables."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from worker.rules.auto_renew import ChargeStatus
from worker.store.models.base import Base, Id, UTCDateTime

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
