"""What a verified webhook event says, in one shape for Stripe and PayPal.

:func:`stripe_notice` and :func:`paypal_notice` read the event's own payload
(no call back to the gateway) into a :class:`GatewayNotice`: which order, which
payment (the gateway's id of the money: a PaymentIntent, a PayPal capture), how
much, and what happened to it.  Events of other types become ``OTHER``: they
are recorded as seen and change nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

STRIPE = "stripe"
PAYPAL = "paypal"
SANDBOX = "sandbox"


class NoticeKind(str, Enum):
    #: Money taken for an order.
    PAYMENT = "payment"
    #: The holder finished the checkout, the money is not there yet (an asynchronous method).
    PAYMENT_PENDING = "payment_pending"
    PAYMENT_FAILED = "payment_failed"
    REFUNDED = "refunded"
    DISPUTE = "dispute"
    #: A PaymentIntent succeeded (Stripe): an auto-renew charge the holder authenticated on
    #: session completes its renewal; a checkout's is registered by its session's event.
    INTENT_SUCCEEDED = "intent_succeeded"
    #: A verified event of a type we do not handle.
    OTHER = "other"


STRIPE_TYPES = {
    "checkout.session.completed": NoticeKind.PAYMENT,
    "checkout.session.async_payment_succeeded": NoticeKind.PAYMENT,
    "checkout.session.async_payment_failed": NoticeKind.PAYMENT_FAILED,
    "payment_intent.payment_failed": NoticeKind.PAYMENT_FAILED,
    "payment_intent.succeeded": NoticeKind.INTENT_SUCCEEDED,
    "charge.refunded": NoticeKind.REFUNDED,
    "charge.dispute.created": NoticeKind.DISPUTE,
}
PAYPAL_TYPES = {
    "PAYMENT.CAPTURE.COMPLETED": NoticeKind.PAYMENT,
    "PAYMENT.CAPTURE.DENIED": NoticeKind.PAYMENT_FAILED,
    "PAYMENT.CAPTURE.REFUNDED": NoticeKind.REFUNDED,
    "CUSTOMER.DISPUTE.CREATED": NoticeKind.DISPUTE,
}
#: The sandbox's own (:mod:`worker.gateways.sandbox_webhooks`).
SANDBOX_TYPES = {
    "charge.succeeded": NoticeKind.PAYMENT,
    "charge.failed": NoticeKind.PAYMENT_FAILED,
    "refund.succeeded": NoticeKind.REFUNDED,
}
#: Every event type the endpoints handle, by gateway (the go-live list subscribes exactly these).
HANDLED_TYPES = {STRIPE: tuple(STRIPE_TYPES), PAYPAL: tuple(PAYPAL_TYPES)}
_ORDER_NUMBER = re.compile(r"\bPEC-\d{4}-\d{6,}\b")


@dataclass(frozen=True)
class GatewayNotice:
    gateway: str
    event_id: str
    event_type: str
    kind: NoticeKind
    order_number: str | None = None
    #: The gateway's id of the money: PaymentIntent (Stripe) or capture (PayPal).
    payment_reference: str | None = None
    amount_cents: int | None = None
    currency: str | None = None
    #: A short, token-free word on what happened (a decline code, a dispute's reason, a status).
    detail: str | None = None
    #: The Checkout Session of a Stripe checkout event, when it keeps the card for auto-renew
    #: (it names a Customer): the card's id is read from it after the payment is registered.
    saved_method_checkout: str | None = None
    #: The PayPal order a capture belongs to (``supplementary_data.related_ids.order_id``): an
    #: auto-renew charge's reference, when the holder's action completed it.
    related_order: str | None = None


def _text(value: Any, limit: int = 200) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value[:limit] if isinstance(value, str) and value else None


def _cents(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def stripe_notice(event: dict) -> GatewayNotice:
    """A verified Stripe event (``stripe.Webhook.construct_event``) as a notice."""
    event_type = str(event["type"])[:64]
    base = {"gateway": STRIPE, "event_id": str(event["id"])[:255], "event_type": event_type}
    kind = STRIPE_TYPES.get(event_type, NoticeKind.OTHER)
    data = event.get("data")
    item = data.get("object") if isinstance(data, dict) else None
    if kind is NoticeKind.OTHER or not isinstance(item, dict):
        return GatewayNotice(**base, kind=NoticeKind.OTHER)
    metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
    currency = _text(item.get("currency"), 3)
    common = {**base, "currency": currency.upper() if currency else None}
    if event_type.startswith("checkout.session."):
        status = _text(item.get("payment_status"), 32)
        if kind is NoticeKind.PAYMENT and status != "paid":
            kind = NoticeKind.PAYMENT_PENDING
        return GatewayNotice(
            **common,
            kind=kind,
            order_number=_text(item.get("client_reference_id"), 24),
            payment_reference=_text(item.get("payment_intent")),
            amount_cents=_cents(item.get("amount_total")),
            detail=f"payment_status {status}",
            saved_method_checkout=_text(item.get("id")) if item.get("customer") else None,
        )
    if event_type == "payment_intent.succeeded":
        return GatewayNotice(
            **common,
            kind=kind,
            order_number=_text(metadata.get("order_number"), 24),
            payment_reference=_text(item.get("id")),
            amount_cents=_cents(item.get("amount")),
            detail="status succeeded",
        )
    if event_type == "payment_intent.payment_failed":
        error = item.get("last_payment_error") if isinstance(item.get("last_payment_error"), dict) else {}
        return GatewayNotice(
            **common,
            kind=kind,
            order_number=_text(metadata.get("order_number"), 24),
            payment_reference=_text(item.get("id")),
            amount_cents=_cents(item.get("amount")),
            detail=_text(error.get("decline_code") or error.get("code"), 64),
        )
    if event_type == "charge.refunded":
        return GatewayNotice(
            **common,
            kind=kind,
            order_number=_text(metadata.get("order_number"), 24),
            payment_reference=_text(item.get("payment_intent")),
            amount_cents=_cents(item.get("amount_refunded")),
            detail="refunded in full" if item.get("refunded") else "refunded in part",
        )
    return GatewayNotice(  # charge.dispute.created
        **common,
        kind=kind,
        order_number=_text(metadata.get("order_number"), 24),
        payment_reference=_text(item.get("payment_intent")),
        amount_cents=_cents(item.get("amount")),
        detail=f"dispute {_text(item.get('id'))}: {_text(item.get('reason'), 64)}",
    )


def paypal_cents(amount: Any) -> tuple[int | None, str | None]:
    """``{"value": "48.80", "currency_code": "EUR"}`` → (4880, "EUR"); (None, None) when unreadable."""
    if not isinstance(amount, dict):
        return None, None
    try:
        value = Decimal(str(amount.get("value")))
    except InvalidOperation:
        return None, None
    cents = value * 100
    if cents != cents.to_integral_value() or cents <= 0:
        return None, None
    return int(cents), _text(amount.get("currency_code"), 3)


def _capture_of(refund: dict) -> str | None:
    """The capture a PayPal refund belongs to: its ``up`` link (``…/v2/payments/captures/{id}``)."""
    for link in refund.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "up" and "/captures/" in str(link.get("href")):
            return _text(str(link["href"]).rstrip("/").rsplit("/", 1)[1])
    return None


def paypal_notice(event: dict) -> GatewayNotice:
    """A PayPal event that verify-webhook-signature answered SUCCESS for, as a notice."""
    event_type = str(event["event_type"])[:64]
    base = {"gateway": PAYPAL, "event_id": str(event["id"])[:255], "event_type": event_type}
    kind = PAYPAL_TYPES.get(event_type, NoticeKind.OTHER)
    resource = event.get("resource")
    if kind is NoticeKind.OTHER or not isinstance(resource, dict):
        return GatewayNotice(**base, kind=NoticeKind.OTHER)
    if kind is NoticeKind.DISPUTE:
        amount, currency = paypal_cents(resource.get("dispute_amount"))
        transactions = resource.get("disputed_transactions") or [{}]
        first = transactions[0] if isinstance(transactions[0], dict) else {}
        return GatewayNotice(
            **base,
            kind=kind,
            order_number=_text(first.get("custom"), 24),
            payment_reference=_text(first.get("seller_transaction_id")),
            amount_cents=amount,
            currency=currency,
            detail=f"dispute {_text(resource.get('dispute_id'))}: {_text(resource.get('reason'), 64)}",
        )
    amount, currency = paypal_cents(resource.get("amount"))
    reference = _capture_of(resource) if kind is NoticeKind.REFUNDED else _text(resource.get("id"))
    supplementary = resource.get("supplementary_data") if isinstance(resource.get("supplementary_data"), dict) else {}
    related = supplementary.get("related_ids") if isinstance(supplementary.get("related_ids"), dict) else {}
    return GatewayNotice(
        **base,
        kind=kind,
        order_number=_text(resource.get("custom_id"), 24),
        payment_reference=reference,
        amount_cents=amount,
        currency=currency,
        detail=f"status {_text(resource.get('status'), 32)}",
        related_order=_text(related.get("order_id")) if kind is NoticeKind.PAYMENT else None,
    )


def sandbox_notice(event_id: str, event: dict) -> GatewayNotice:
    """A verified sandbox event (:func:`worker.gateways.sandbox_webhooks.verify`) as a notice.  A charge
    names the payment by the key it was made under (what the sandbox's checkout registers it as),
    and its order by the number in its description; a refund names the payment it was asked for."""
    event_type = event["type"]
    kind = SANDBOX_TYPES.get(event_type, NoticeKind.OTHER)
    data = event.get("data") or {}
    description = data.get("description")
    number = _ORDER_NUMBER.search(description) if isinstance(description, str) else None
    reference = data.get("payment") if kind is NoticeKind.REFUNDED else data.get("idempotency_key")
    return GatewayNotice(
        gateway=SANDBOX,
        event_id=event_id[:200],
        event_type=event_type[:80],
        kind=kind,
        order_number=number.group(0) if number else None,
        payment_reference=_text(reference),
        amount_cents=_cents(data.get("amount_cents")),
        currency=_text(data.get("currency"), 3),
        detail=_text(data.get("decline_code"), 64),
    )
