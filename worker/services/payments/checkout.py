"""Card and PayPal at checkout: the charge of a confirmed order, then its registration.

"Intent, act, record", as for auto-renew charges (``worker.gateways.base``):
the attempt is committed before the gateway is called, with an idempotency
key per attempt, and an attempt whose answer was lost is settled with the
gateway's own record before any new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy.orm import Session

from config.settings import Settings
from worker.gateways.base import ChargeOutcome, ChargeResult, KeepsChargedMethod, PaymentGateway, SavedMethod
from worker.rules.schedule import Stage
from worker.rules.vocabulary import GATEWAY_METHODS
from worker.services.payments.registration import (
    PaymentRefused,
    RegistrationResult,
    register_payment,
)
from worker.store.models import OrderStatus, RenewalOrder


@dataclass(frozen=True)
class GatewayPaymentResult:
    """What happened at checkout: ``outcome`` is a ChargeOutcome value, or ``already_paid``."""

    outcome: str
    message: str
    registration: RegistrationResult | None = None
    decline_code: str | None = None
    #: The gateway's id of the payment (to authenticate it on session when it asks for that).
    reference: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.registration is not None


def gateway_idempotency_key(order: RenewalOrder, attempt: int) -> str:
    """``order:{id}:{attempt}``: one key per checkout attempt, so a declined card can be replaced by
    another (a gateway refuses a key reused with a different method), while a retry of the same
    attempt, or its reconciliation, reuses the key and never charges twice."""
    return f"order:{order.id}:{attempt}"


def pay_order_with_gateway(
    session: Session,
    gateway: PaymentGateway,
    order: RenewalOrder,
    payment_method_token: str,
    *,
    method: str,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
) -> GatewayPaymentResult:
    """Charge a card / PayPal token for a confirmed order, and register the payment on success.

    Intent, act, record: the attempt (``gateway_attempts``, ``gateway_state =
    "started"``) is COMMITTED before the gateway is called, with the
    idempotency key ``order:{id}:{attempt}``.  An attempt left ``started`` or
    ``unknown`` (a crash, a timeout) is first reconciled with
    ``gateway.lookup(key)``: a charge the gateway made is registered (with the
    token it was made with), never made again; a key the gateway never saw is
    replayed with the same key and token, so two checkouts at once charge
    once.  On success the payment is registered (reference
    ``{gateway.name}:{key}``), the token stored and auto-renew switched on.
    A decline changes nothing but the attempt's state.  This function
    commits (twice: the intent, then the result).
    """
    if method not in GATEWAY_METHODS:
        raise PaymentRefused("bad_method", f"{method!r} is not card or paypal")
    if not isinstance(payment_method_token, str) or not payment_method_token.strip():
        raise PaymentRefused("bad_token", "no payment method token")
    session.refresh(order, with_for_update=True)
    if order.status == OrderStatus.PAID.value:
        session.commit()
        return GatewayPaymentResult("already_paid", f"{order.order_number} is already paid")
    if order.status != OrderStatus.AWAITING_PAYMENT.value or not order.total_cents:
        session.rollback()
        raise PaymentRefused("not_payable", f"order {order.public_id} is {order.status}, not awaiting payment")
    checkout = _Checkout(session, gateway, order, method, now, today, settings, stages)
    # An attempt whose outcome was never recorded (a crash, a lost answer, or another
    # request still waiting for the gateway) is settled first, with its own key and token.
    if order.gateway_state in ("started", ChargeOutcome.UNKNOWN.value) and order.gateway_attempts:
        settled = checkout.settle_open_attempt(order.gateway_token or payment_method_token)
        if settled is not None:
            return settled
    order.gateway_attempts = (order.gateway_attempts or 0) + 1
    order.gateway_state = "started"
    order.gateway_token = payment_method_token
    key = gateway_idempotency_key(order, order.gateway_attempts)
    session.commit()  # the intent, before the gateway is called
    return checkout.record(key, payment_method_token, checkout.charge(key, payment_method_token))


@dataclass(frozen=True)
class _Checkout:
    """One checkout of ``order`` with ``gateway``: its charges, and the record of their answers."""

    session: Session
    gateway: PaymentGateway
    order: RenewalOrder
    method: str
    now: datetime
    today: date
    settings: Settings
    stages: tuple[Stage, ...] | None

    def charge(self, key: str, token: str) -> ChargeResult:
        return self.gateway.charge(
            payment_method=token,
            amount_cents=self.order.total_cents or 0,
            currency="EUR",
            idempotency_key=key,
            description=f"Rinnovo PEC {self.order.order_number}",
        )

    def record(self, key: str, token: str, result: ChargeResult) -> GatewayPaymentResult:
        """Write the gateway's answer for attempt ``key`` (and register a success); commits.

        A gateway that keeps the charged method (the sandbox) is asked for it before the order is
        locked: the mailboxes store that method, and its card's expiry, for auto-renew."""
        order = self.order
        kept: SavedMethod | None = None
        if result.outcome is ChargeOutcome.SUCCEEDED and isinstance(self.gateway, KeepsChargedMethod):
            self.session.commit()  # no lock is held while the gateway is asked
            kept = self.gateway.keep_charged_method(key)
        self.session.refresh(order, with_for_update=True)
        if gateway_idempotency_key(order, order.gateway_attempts) == key:
            order.gateway_state = result.outcome.value
        registration = None
        if result.outcome is ChargeOutcome.SUCCEEDED:
            registration = register_payment(
                self.session,
                order_number=order.order_number,
                amount_cents=order.total_cents,
                method=self.method,
                reference=f"{self.gateway.name}:{key}",
                now=self.now,
                today=self.today,
                settings=self.settings,
                stages=self.stages,
                payment_token=kept.token if kept is not None else token,
                card_expires_on=kept.card_expires_on if kept is not None else None,
            )
        self.session.commit()
        return GatewayPaymentResult(
            result.outcome.value, result.message, registration, result.decline_code, result.reference
        )

    def settle_open_attempt(self, token: str) -> GatewayPaymentResult | None:
        """The answer of the attempt left open, from the gateway's record (or a replay with its key);
        None when it was declined and a new attempt may follow."""
        order = self.order
        key = gateway_idempotency_key(order, order.gateway_attempts)
        self.session.commit()  # no lock is held while the gateway is asked
        found = self.gateway.lookup(key)
        if found is None:
            # The gateway never saw the key (or the call is still in flight): replaying the
            # same key with the same parameters is safe, and the gateway charges at most once.
            return self.record(key, token, self.charge(key, token))
        if found.outcome in (ChargeOutcome.SUCCEEDED, ChargeOutcome.UNKNOWN):
            return self.record(key, token, found)
        self.session.refresh(order, with_for_update=True)
        order.gateway_state = found.outcome.value  # declined: a new attempt may follow
        return None


def complete_checkout_authentication(
    session: Session,
    gateway: PaymentGateway,
    order: RenewalOrder,
    *,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
) -> GatewayPaymentResult | None:
    """After the holder answered the authentication (3-D Secure) of the order's last attempt: the
    gateway's record of that attempt, registered exactly as any card payment when it succeeded
    (the token stored, auto-renew switched on as chosen).  None when the attempt is not one that
    waited for an authentication.  A refused authentication leaves the order awaiting payment,
    every method still allowed.  Commits."""
    session.refresh(order, with_for_update=True)
    if (
        order.status != OrderStatus.AWAITING_PAYMENT.value
        or order.gateway_state != ChargeOutcome.REQUIRES_AUTHENTICATION.value
        or not order.gateway_attempts
        or order.payment_method not in GATEWAY_METHODS
    ):
        session.rollback()
        return None
    key = gateway_idempotency_key(order, order.gateway_attempts)
    token = order.gateway_token or ""
    session.commit()  # no lock is held while the gateway is asked
    found = gateway.lookup(key)
    if found is None:
        return None
    checkout = _Checkout(session, gateway, order, order.payment_method, now, today, settings, stages)
    return checkout.record(key, token, found)
