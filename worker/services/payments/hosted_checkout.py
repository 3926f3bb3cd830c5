"""Card and PayPal orders paid on the gateway's hosted page (Stripe Checkout, PayPal Orders v2).

1. :func:`start_hosted_checkout` commits the attempt (``gateway_attempts`` + 1,
   ``gateway_state = "hosted"``) before asking the gateway for a checkout with
   the idempotency key ``checkout:{order id}:{attempt}``, then keeps the
   checkout's id on the order (``gateway_token``) and returns the page to send
   the holder to.
2. Back on our return page, :func:`read_hosted_checkout` says what the gateway
   says now (a read); for PayPal, :func:`finish_hosted_checkout` captures the
   approved order (the holder's last click, a POST) and registers the payment
   through :func:`webhooks.apply_gateway_payment`, the path the webhooks take,
   under the same reference: whichever comes first registers it, the other
   finds it registered.  For Stripe the ``checkout.session.completed`` webhook
   registers it.
3. Only the checkout the order started is read: a return with another id is
   ignored.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.gateways.hosted import HostedPayment, HostedStatus
from worker.rules.vocabulary import GATEWAY_METHODS
from worker.services.orders.summary import holder_snapshot, order_language
from worker.services.payments.gateway_events import GatewayNotice, NoticeKind
from worker.services.payments.registration import PaymentRefused
from worker.services.payments.webhooks import EventResult, apply_gateway_payment, store_payment_method
from worker.store.models import OrderStatus, RenewalOrder

HOSTED = "hosted"


def checkout_key(order: RenewalOrder) -> str:
    return f"checkout:{order.id}:{order.gateway_attempts}"


def start_hosted_checkout(session: Session, gateway, order: RenewalOrder, *, settings: Settings) -> str:
    """Open a checkout on the gateway's page for a confirmed card / PayPal order; the URL to send the
    holder to.  Commits (the attempt, then the checkout's id).  Raises PaymentRefused when the
    order is not awaiting a card / PayPal payment, GatewayError when the gateway does not answer."""
    session.refresh(order, with_for_update=True)
    if order.status != OrderStatus.AWAITING_PAYMENT.value or order.payment_method not in GATEWAY_METHODS:
        session.rollback()
        raise PaymentRefused("not_payable", f"order {order.public_id} is not awaiting a card or PayPal payment")
    order.gateway_attempts = (order.gateway_attempts or 0) + 1
    order.gateway_state = HOSTED
    order.gateway_token = None
    key = checkout_key(order)
    holder = order.holder_data or holder_snapshot(order.holder)
    ask = {
        "order_number": order.order_number,
        "amount_cents": order.total_cents,
        "currency": "EUR",
        "description": f"Rinnovo PEC {order.order_number}",
        "success_url": return_url(settings, order, gateway.name),
        "cancel_url": f"{settings.base_url}/ordine/{order.public_id}/pagamento/annullato",
        "idempotency_key": key,
        "email": holder["reference_email"],
        "language": order_language(order),
        # Paying by card or PayPal switches auto-renew on (the order's terms): keep the method.
        "save_method": True,
    }
    order_id = order.id
    session.commit()  # the attempt, before the gateway is asked
    hosted = gateway.start_checkout(**ask)
    order = session.get(RenewalOrder, order_id, with_for_update=True)
    if checkout_key(order) == key:
        order.gateway_token = hosted.reference
    session.commit()
    return hosted.url


def return_url(settings: Settings, order: RenewalOrder, gateway_name: str) -> str:
    base = f"{settings.base_url}/ordine/{order.public_id}/pagamento/esito"
    # Stripe puts the session's id in place of {CHECKOUT_SESSION_ID}; PayPal adds ?token=<order id>.
    return base + "?session_id={CHECKOUT_SESSION_ID}" if gateway_name == "stripe" else base


def started_checkout(order: RenewalOrder, returned: str | None) -> str | None:
    """The checkout this order started, if ``returned`` (the id on the return URL) is it."""
    if order.gateway_state != HOSTED or not order.gateway_token or returned != order.gateway_token:
        return None
    return order.gateway_token


def read_hosted_checkout(gateway, reference: str) -> HostedPayment:
    """What the gateway says of the checkout now (Stripe: a read)."""
    return gateway.checkout_status(reference)


def finish_hosted_checkout(
    session: Session, gateway, order: RenewalOrder, reference: str, *, now: datetime, today: date, settings: Settings
) -> tuple[HostedPayment, EventResult | None]:
    """Take the money of an approved checkout (PayPal's capture) and register it; commits.  No
    transaction is held while the gateway is asked."""
    session.commit()
    payment = gateway.checkout_status(reference)
    if payment.status is not HostedStatus.PAID:
        return payment, None
    notice = GatewayNotice(
        gateway=gateway.name,
        event_id=f"return:{reference}",
        event_type="return",
        kind=NoticeKind.PAYMENT,
        order_number=payment.order_number,
        payment_reference=payment.payment_reference,
        amount_cents=payment.amount_cents,
        currency=payment.currency,
    )
    result, _detail = apply_gateway_payment(
        session, notice, now=now, today=today, settings=settings, payment_token=payment.payment_token
    )
    session.commit()
    return payment, result


def remember_saved_method(
    session: Session, gateway, order_number: str, checkout_reference: str, *, now: datetime, today: date
) -> str | None:
    """After a webhook registered a Stripe checkout that kept the card: read the card's id from the
    session and keep it on the order's mailboxes for auto-renew; commits.  The registration never
    waits for this read: when Stripe cannot be asked, the mailboxes keep their method until the holder
    returns or the operator sets it."""
    payment = gateway.checkout_status(checkout_reference)
    order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == order_number))
    if payment.payment_token is None or order is None or payment.order_number != order_number:
        return None
    store_payment_method(session, order, payment.payment_token, now=now, today=today)
    session.commit()
    return payment.payment_token
