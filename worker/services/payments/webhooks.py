"""Webhook events, the source of truth for gateway payments: each processed once.

:func:`record_event` runs in one transaction with the caller: it inserts the
event's ``gateway_events`` row under the unique ``(gateway, event id)`` (a
replay finds the row and changes nothing), applies the event, and stores what
it did on the row.  The caller commits, then settles the refund the event may
have started (``refunds.settle_refund``): no transaction is held while the
gateway is asked.

What each kind of event does:

- a **payment** (Stripe ``checkout.session.completed`` paid or
  ``async_payment_succeeded``; PayPal ``PAYMENT.CAPTURE.COMPLETED``) whose order
  number, amount and currency are the order's registers the payment from the
  event's own payload, with the reference ``{gateway}:{payment id}`` that the
  return page uses too, so the two register it once.  Another amount or
  currency is recorded as ``amount_mismatch`` and registers nothing.  A payment
  for an order already paid by another payment, cancelled, or whose mailbox was
  renewed meanwhile is refunded automatically (``refund_due``).  A payment
  already refunded (its refund event came first) is not registered.
- a payment **pending**, **failed** or **denied**: recorded; the order stays
  awaiting payment with every method allowed.
- a **refund**: recorded; a refund we asked for and still had open is marked done.
- a **dispute**: recorded and alerted; it never changes a mailbox.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.rules.vocabulary import CARD, PAYPAL
from worker.services.payments.gateway_events import GatewayNotice, NoticeKind
from worker.services.payments.refunds import AUTOMATIC, OPEN_STATES, start_refund
from worker.services.payments.registration import PaymentRefused, register_payment
from worker.services.platform_events import set_auto_renew
from worker.store.db import dialect_insert
from worker.store.models import GatewayEvent, GatewayRefund, Mailbox, RenewalOrder

log = logging.getLogger(__name__)

_EVENTS = GatewayEvent.__table__

REPLAY = "replay"
REGISTERED = "registered"
ALREADY_REGISTERED = "already_registered"
AMOUNT_MISMATCH = "amount_mismatch"
REFUND_DUE = "refund_due"
UNMATCHED = "unmatched"
NOT_AN_ORDER = "not_an_order"
REFUNDED_FIRST = "refunded_first"
IGNORED = "ignored"
#: Outcomes an operator must look at (the runbook's alerts).
ALERTS = frozenset({AMOUNT_MISMATCH, UNMATCHED, REFUND_DUE, NoticeKind.DISPUTE.value})
#: Why a payment that cannot be registered is given back (registration's refusal codes).
REFUND_CODES = frozenset({"already_paid", "mailbox_changed", "mailbox_deleted", "not_payable", "on_domain"})


@dataclass(frozen=True)
class EventResult:
    outcome: str
    order_number: str | None = None
    #: A refund this event started (committed with it): settle it after the commit.
    refund_id: int | None = None


def record_event(
    session: Session, notice: GatewayNotice, *, now: datetime, today: date, settings: Settings
) -> EventResult:
    """Record and apply one verified event in the caller's transaction; see the module's docstring.

    An event of a type we do not handle changes nothing, not even this table."""
    if notice.kind is NoticeKind.OTHER:
        _log(notice, IGNORED)
        return EventResult(IGNORED)
    row_id = session.execute(
        dialect_insert(session, _EVENTS)
        .values(
            gateway=notice.gateway,
            event_id=notice.event_id,
            event_type=notice.event_type,
            outcome="processing",
            order_number=notice.order_number,
            payment_reference=notice.payment_reference,
            amount_cents=notice.amount_cents,
            currency=notice.currency,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["gateway", "event_id"])
        .returning(_EVENTS.c.id)
    ).scalar()
    if row_id is None:
        _log(notice, REPLAY)
        return EventResult(REPLAY, notice.order_number)
    result, detail = _apply(session, notice, now=now, today=today, settings=settings)
    session.execute(
        update(_EVENTS)
        .where(_EVENTS.c.id == row_id)
        .values(outcome=result.outcome, detail=(detail or notice.detail or "")[:1000] or None)
    )
    _log(notice, result.outcome, detail)
    return result


def _apply(session: Session, notice: GatewayNotice, *, now, today, settings) -> tuple[EventResult, str | None]:
    kind = notice.kind
    if kind is NoticeKind.PAYMENT:
        return apply_gateway_payment(session, notice, now=now, today=today, settings=settings)
    if kind is NoticeKind.REFUNDED:
        if notice.payment_reference:
            session.execute(
                update(GatewayRefund)
                .where(
                    GatewayRefund.gateway == notice.gateway,
                    GatewayRefund.payment_reference == notice.payment_reference,
                    GatewayRefund.status.in_((*OPEN_STATES, "pending")),
                )
                .values(status="succeeded", resolved_at=now)
            )
        return EventResult(kind.value, notice.order_number), None
    if kind is NoticeKind.OTHER:
        return EventResult(IGNORED), None
    return EventResult(kind.value, notice.order_number), None


def apply_gateway_payment(
    session: Session, notice: GatewayNotice, *, now, today, settings, payment_token: str | None = None
) -> tuple[EventResult, str | None]:
    """Register (or refund, or refuse) a payment a gateway took for an order: the one path for the
    webhooks and the return from a hosted page.  ``payment_token``: the method kept for auto-renew."""
    number = (notice.order_number or "").upper()
    if not number.startswith("PEC-"):
        # Not a checkout of ours (an auto-renew charge, recorded by the charge service).
        return EventResult(NOT_AN_ORDER), "no order number in the event"
    if not notice.payment_reference or notice.amount_cents is None:
        return EventResult(UNMATCHED, number), "the event names no payment or no amount"
    order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == number))
    if order is None:
        return EventResult(UNMATCHED, number), f"no order {number}"
    refunded_first = session.scalar(
        select(GatewayEvent.id).where(
            GatewayEvent.gateway == notice.gateway,
            GatewayEvent.payment_reference == notice.payment_reference,
            GatewayEvent.outcome == NoticeKind.REFUNDED.value,
        )
    )
    if refunded_first is not None:
        return EventResult(REFUNDED_FIRST, number), "the payment's refund arrived first: not registered"
    if notice.currency != "EUR" or notice.amount_cents != order.total_cents:
        return EventResult(AMOUNT_MISMATCH, number), (
            f"paid {notice.amount_cents} {notice.currency}, the order is {order.total_cents} EUR: not registered"
        )
    method = order.payment_method if order.payment_method in (CARD, PAYPAL) else _method_of(notice.gateway)
    try:
        registration = register_payment(
            session,
            order_number=number,
            amount_cents=notice.amount_cents,
            method=method,
            reference=f"{notice.gateway}:{notice.payment_reference}",
            now=now,
            today=today,
            settings=settings,
            payment_token=payment_token,
        )
    except PaymentRefused as refused:
        if refused.code not in REFUND_CODES:
            return EventResult(UNMATCHED, number), f"{refused.code}: not registered"
        refund = start_refund(
            session,
            gateway=notice.gateway,
            order=order,
            payment_reference=notice.payment_reference,
            amount_cents=notice.amount_cents,
            currency=notice.currency or "EUR",
            kind=AUTOMATIC,
            reason=_REFUND_REASONS.get(refused.code, refused.code),
            now=now,
        )
        return EventResult(REFUND_DUE, number, refund.id), f"{refused.code}: refunded automatically"
    if not registration.registered:
        if payment_token:
            store_payment_method(session, order, payment_token, now=now, today=today)
        return EventResult(ALREADY_REGISTERED, number), None
    order.gateway_state = "succeeded"
    return EventResult(REGISTERED, number), None


def store_payment_method(
    session: Session, order: RenewalOrder, payment_token: str, *, now: datetime, today: date
) -> None:
    """Keep the method of an order's registered gateway payment for auto-renew on its mailboxes, when it
    became known after the registration (Stripe's card is read from the Checkout Session); the platform
    hears of auto-renew switched on."""
    ids = [line.mailbox_id for line in order.lines if line.selected]
    for mailbox in session.scalars(select(Mailbox).where(Mailbox.id.in_(ids)).with_for_update()):
        if mailbox.payment_method != payment_token:
            mailbox.card_expires_on = None
        mailbox.payment_method = payment_token
        set_auto_renew(session, mailbox, True, source="payment", now=now, today=today)


_REFUND_REASONS = {
    "already_paid": "the order was already paid by another payment",
    "mailbox_changed": "the mailbox was renewed meanwhile",
    "mailbox_deleted": "the mailbox was deleted",
    "not_payable": "the order is no longer awaiting payment",
    "on_domain": "the mailbox was moved onto a domain",
}


def _method_of(gateway: str) -> str:
    return PAYPAL if gateway == "paypal" else CARD


def _log(notice: GatewayNotice, outcome: str, detail: str | None = None) -> None:
    level = logging.WARNING if outcome in ALERTS else logging.INFO
    log.log(
        level,
        "webhook %s event %s (%s) order %s: %s%s",
        notice.gateway,
        notice.event_id,
        notice.event_type,
        notice.order_number or "-",
        outcome,
        f" ({detail})" if detail else "",
    )
