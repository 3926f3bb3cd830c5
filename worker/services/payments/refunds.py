"""Refunds through the gateway that took the payment: "intent, act, record", then the holder's email.

:func:`start_refund` writes a ``gateway_refunds`` row (``started``) with a
deterministic idempotency key, in the caller's transaction; once it is committed
:func:`settle_refund` asks the gateway (with that key as its idempotency key),
records the answer and, when the money went back, queues a ``payment-refunded``
email to the holder.  A refund left ``started`` or ``unknown`` (a crash, a lost
answer) is asked again with the same key by :func:`settle_open_refunds`, which
never refunds twice.

Two kinds: ``automatic`` (a gateway payment for an order already paid by another
payment, or for a mailbox renewed meanwhile: see ``webhooks``) and ``requested``
(``pec-renewal payments refund``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.gateways.refunds import RefundOutcome
from worker.mail.message_ids import OrderEmail
from worker.mail.queue import NewEmail, queue_email
from worker.rules import einvoice, pricing
from worker.services.invoices import record_credit_note
from worker.services.orders import ORDER_EMAIL_STAGE, mail_domain, order_email_context
from worker.services.orders.summary import holder_snapshot, order_language
from worker.services.payments.registration import PaymentRefused
from worker.store.models import REFUND_OPEN_STATES, GatewayRefund, Invoice, RenewalOrder

log = logging.getLogger(__name__)

PAYMENT_REFUNDED = "payment-refunded"
AUTOMATIC = "automatic"
REQUESTED = "requested"
#: The states of a refund whose answer is not recorded yet: asked again with the same key.
OPEN_STATES = REFUND_OPEN_STATES


@dataclass(frozen=True)
class RefundDone:
    refund_id: int
    status: str
    amount_cents: int
    order_number: str | None
    message: str


def refund_key(gateway: str, payment_reference: str, kind: str, number: int = 1) -> str:
    """``refund:{gateway}:{payment}:{kind}:{n}``: one key per refund of a payment."""
    return f"refund:{gateway}:{payment_reference}:{kind}:{number}"[:200]


def start_refund(
    session: Session,
    *,
    gateway: str,
    order: RenewalOrder | None,
    payment_reference: str,
    amount_cents: int,
    currency: str,
    kind: str,
    reason: str,
    now: datetime,
) -> GatewayRefund:
    """The refund's intent, in the caller's transaction (the caller commits, then settles it)."""
    earlier = session.scalar(
        select(func.count())
        .select_from(GatewayRefund)
        .where(GatewayRefund.gateway == gateway, GatewayRefund.payment_reference == payment_reference)
    )
    refund = GatewayRefund(
        gateway=gateway,
        order_id=order.id if order is not None else None,
        payment_reference=payment_reference,
        idempotency_key=refund_key(gateway, payment_reference, kind, (earlier or 0) + 1),
        amount_cents=amount_cents,
        currency=currency.upper(),
        kind=kind,
        reason=" ".join(reason.split())[:200],
        status="started",
        created_at=now,
    )
    session.add(refund)
    session.flush()
    return refund


#: Writes the holder's email of a refund that belongs to no order (an auto-renew charge given back),
#: in the caller's transaction: ``(session, refund, *, today, now)``.
ChargeRefundEmail = Callable[..., object]


def settle_refund(
    session: Session,
    gateway,
    refund_id: int,
    *,
    now: datetime,
    today: date,
    settings: Settings | None,
    charge_email: ChargeRefundEmail | None = None,
) -> RefundDone:
    """Ask the gateway for the committed refund ``refund_id`` and record its answer; commits.

    No transaction is held while the gateway is asked.  On success (or when the
    gateway accepted it as pending) the holder's email is queued with the record: an
    order's by this module, an auto-renew charge's by ``charge_email``
    (:func:`worker.services.charges.emails.queue_charge_refund_email`).
    """
    refund = session.get(GatewayRefund, refund_id)
    if refund is None:
        raise PaymentRefused("unknown_refund", f"no refund {refund_id}")
    if refund.status not in OPEN_STATES:
        session.commit()
        return _done(session, refund, "already settled")
    ask = {
        "reference": refund.payment_reference,
        "amount_cents": refund.amount_cents,
        "currency": refund.currency,
        "idempotency_key": refund.idempotency_key,
        "kind": refund.kind,
        "reason": refund.reason,
    }
    session.commit()  # no lock is held while the gateway is asked
    result = gateway.refund(**ask)
    refund = session.get(GatewayRefund, refund_id, with_for_update=True)
    if refund.status in OPEN_STATES:
        refund.status = result.outcome.value
        refund.refund_reference = result.reference
        if result.outcome is not RefundOutcome.UNKNOWN:
            refund.resolved_at = now
        told = result.outcome in (RefundOutcome.SUCCEEDED, RefundOutcome.PENDING)
        if told and refund.order_id is not None and settings is not None:
            _queue_refund_email(session, refund, now=now, today=today, settings=settings)
        elif told and refund.order_id is None and charge_email is not None:
            charge_email(session, refund, today=today, now=now)
        if result.outcome is RefundOutcome.SUCCEEDED and settings is not None:
            record_refund_credit_note(session, refund, now=now, today=today, settings=settings)
    session.commit()
    log.log(
        logging.WARNING if result.outcome in (RefundOutcome.FAILED, RefundOutcome.UNKNOWN) else logging.INFO,
        "refund %s (%s) of %s %s: %s",
        refund.id,
        refund.kind,
        refund.gateway,
        refund.payment_reference,
        result.outcome.value,
    )
    return _done(session, refund, result.message)


def settle_open_refunds(
    session_factory: Callable[[], Session],
    gateways: Callable[[str], object],
    *,
    clock,
    today: date,
    settings,
    charge_email: ChargeRefundEmail | None = None,
) -> list[RefundDone]:
    """Every refund left ``started`` or ``unknown``, asked again with its own key."""
    with session_factory() as session:
        open_refunds = session.execute(
            select(GatewayRefund.id, GatewayRefund.gateway)
            .where(GatewayRefund.status.in_(OPEN_STATES))
            .order_by(GatewayRefund.id)
        ).all()
    done = []
    for refund_id, gateway in open_refunds:
        with session_factory() as session:
            done.append(
                settle_refund(
                    session,
                    gateways(gateway),
                    refund_id,
                    now=clock(),
                    today=today,
                    settings=settings,
                    charge_email=charge_email,
                )
            )
    return done


def gateway_payment_of(session: Session, order: RenewalOrder) -> tuple[str, str, int]:
    """(gateway, its payment reference, amount) of the order's gateway payment, for a requested refund."""
    for payment in sorted(order.payments, key=lambda item: item.id, reverse=True):
        gateway, separator, reference = payment.reference.partition(":")
        # Stripe's and PayPal's payments are refunded by the gateway's own id (a PaymentIntent, a
        # capture); the sandbox finds its charge by the key the checkout charged it under too.
        by_key = reference.startswith("order:") and gateway != "sandbox"
        if separator and gateway in ("stripe", "paypal", "sandbox") and not by_key:
            refunded = session.scalar(
                select(func.coalesce(func.sum(GatewayRefund.amount_cents), 0)).where(
                    GatewayRefund.payment_reference == reference,
                    GatewayRefund.status.in_(("succeeded", "pending", *OPEN_STATES)),
                )
            )
            return gateway, reference, payment.amount_cents - int(refunded or 0)
    raise PaymentRefused(
        "no_gateway_payment",
        f"{order.order_number} has no payment taken by a gateway's hosted page (bank transfers and slips are "
        "refunded by the bank)",
        order_number=order.order_number,
    )


def request_refund(
    session: Session,
    *,
    order_number: str,
    amount_cents: int | None,
    reason: str,
    now: datetime,
) -> GatewayRefund:
    """The intent of ``pec-renewal payments refund``: the order's gateway payment, the amount (default:
    what is left of it), checked; the caller commits and settles it.

    What is left is the payment less every refund of it not failed (started, pending, succeeded or
    unknown), read under the order's row lock: two requests at once are counted one after the other.
    An amount over it is refused (:class:`PaymentRefused`) and nothing is written."""
    number = (order_number or "").strip().upper()
    # The order's row is locked until the caller commits the intent: a second request for the same
    # order waits here and then counts this one, so the refunds never add up to more than was paid.
    order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == number).with_for_update())
    if order is None:
        raise PaymentRefused("unknown_order", f"no order {number or '(empty)'}", order_number=number or None)
    gateway, reference, left = gateway_payment_of(session, order)
    amount = left if amount_cents is None else amount_cents
    if amount <= 0 or amount > left:
        raise PaymentRefused(
            "bad_amount",
            f"{number}: {pricing.format_amount(max(amount, 0))} EUR cannot be refunded; "
            f"{pricing.format_amount(left)} EUR is left of the payment",
            order_number=number,
        )
    return start_refund(
        session,
        gateway=gateway,
        order=order,
        payment_reference=reference,
        amount_cents=amount,
        currency="EUR",
        kind=REQUESTED,
        reason=reason or "requested",
        now=now,
    )


def record_refund_credit_note(
    session: Session, refund: GatewayRefund, *, now: datetime, today: date, settings: Settings
) -> None:
    """A requested refund of a paid order's payment, once the gateway says it succeeded (its answer to
    the request, or later its webhook): the credit note (TD04) of the order's invoice, in this
    transaction.  An automatic refund gives back a payment that was never registered, so never invoiced."""
    if refund.kind != REQUESTED or refund.order_id is None:
        return
    invoice_id = session.scalar(
        select(Invoice.id).where(Invoice.order_id == refund.order_id, Invoice.kind == einvoice.INVOICE)
    )
    if invoice_id is None:
        return
    try:
        record_credit_note(
            session.connection(),
            invoice_id=invoice_id,
            refunded_cents=refund.amount_cents,
            refund_key=refund.idempotency_key,
            seller=settings.seller,
            today=today,
            now=now,
        )
    except ValueError as error:  # a refund that does not fit the invoice: the refund stands, an operator notes it
        log.warning("refund %s: no credit note (%s)", refund.id, error)


def _queue_refund_email(session: Session, refund: GatewayRefund, *, now, today, settings) -> None:
    order = session.get(RenewalOrder, refund.order_id)
    holder = order.holder_data or holder_snapshot(order.holder)
    context = order_email_context(order, settings)
    context["refund"] = {"amount_cents": refund.amount_cents, "kind": refund.kind, "method": _method_of(order, refund)}
    email = NewEmail(
        about=OrderEmail(PAYMENT_REFUNDED, order.order_number),
        kind=PAYMENT_REFUNDED,
        stage=ORDER_EMAIL_STAGE,
        language=order_language(order),
        to_address=holder["reference_email"].lower(),
        context=context,
        resend=f"refund-{refund.id}",
    )
    queue_email(session, email, mail_domain=mail_domain(settings), business_date=today, now=now)


def _method_of(order: RenewalOrder, refund: GatewayRefund) -> str:
    if refund.gateway == "paypal":
        return "paypal"
    if refund.gateway == "stripe":
        return "card"
    return order.payment_method if order.payment_method in ("card", "paypal") else "card"


def _done(session: Session, refund: GatewayRefund, message: str) -> RefundDone:
    order = session.get(RenewalOrder, refund.order_id) if refund.order_id is not None else None
    return RefundDone(refund.id, refund.status, refund.amount_cents, order.order_number if order else None, message)
