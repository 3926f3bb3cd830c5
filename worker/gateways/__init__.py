"""Payment gateways behind one small protocol: sandbox (default), Stripe, PayPal.

``make_gateway(settings, session_factory)`` picks the adapter named by
``PEC_RENEWAL_PAYMENT_GATEWAY``.  The protocol, the outcomes and the errors are
in :mod:`worker.gateways.base`; each adapter documents what its stored token
(``Mailbox.payment_method``) is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from worker.gateways.base import (
    AuthenticationStep,
    ChargeAuthentication,
    ChargeOutcome,
    ChargeResult,
    GatewayError,
    IdempotencyConflict,
    InvalidPaymentMethod,
    KeepsChargedMethod,
    MethodSetup,
    PaymentGateway,
    SavedMethod,
    mask_token,
)
from worker.gateways.paypal import PayPalGateway
from worker.gateways.sandbox import SandboxGateway
from worker.gateways.stripe_gateway import StripeGateway

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from config.settings import Settings

__all__ = [
    "AuthenticationStep",
    "ChargeAuthentication",
    "ChargeOutcome",
    "ChargeResult",
    "GatewayError",
    "IdempotencyConflict",
    "InvalidPaymentMethod",
    "KeepsChargedMethod",
    "MethodSetup",
    "PaymentGateway",
    "SavedMethod",
    "describe_payment_method",
    "make_gateway",
    "mask_token",
]


def make_gateway(
    settings: Settings,
    session_factory: sessionmaker[Session] | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    name: str | None = None,
) -> PaymentGateway:
    """The adapter chosen by ``settings.payment_gateway``, or the one ``name``d (a refund goes
    through the gateway that took the payment, a late webhook comes from the gateway that sent it).

    ``session_factory`` is needed by the sandbox only (it keeps its own table);
    ``clock`` stamps the sandbox's records (default: the wall clock, UTC).
    The caller owns the gateway: call ``close()`` when done.
    """
    name = name or settings.payment_gateway
    if name == "sandbox":
        if session_factory is None:
            raise GatewayError("the sandbox gateway needs a session factory (it records charges in its own table)")
        return SandboxGateway(
            session_factory,
            latency_ms=settings.sandbox_latency_ms,
            clock=clock,
            webhooks=settings.sandbox_webhook_url is not None,
        )
    if name == "stripe":
        return StripeGateway(
            api_key=settings.stripe_api_key or "",
            api_base=settings.stripe_api_base,
            pool_size=settings.gateway_concurrency,
        )
    if name == "paypal":
        return PayPalGateway(
            client_id=settings.paypal_client_id or "",
            client_secret=settings.paypal_client_secret or "",
            api_base=settings.paypal_api_base,
            pool_size=settings.gateway_concurrency,
            return_url=f"{settings.base_url.rstrip('/')}/rinnovo-automatico/autenticazione/paypal",
        )
    raise GatewayError(f"unknown payment gateway {name!r}")


# Stripe's documented test PaymentMethods (and the sandbox's own), with the card they stand for.
_KNOWN_CARDS = {
    "pm_card_visa": ("Visa", "4242"),
    "pm_card_visa_debit": ("Visa", "5556"),
    "pm_card_mastercard": ("Mastercard", "4444"),
    "pm_card_amex": ("American Express", "8431"),
    "pm_card_chargeDeclined": ("Visa", "0002"),
    "pm_card_chargeDeclinedInsufficientFunds": ("Visa", "9995"),
    "pm_card_chargeDeclinedExpiredCard": ("Visa", "0069"),
    "pm_card_authenticationRequired": ("Visa", "3184"),
    "pm_card_authenticationRequiredSetupForOffSession": ("Visa", "3155"),
    "pm_sandbox_timeout": ("Visa", "0019"),
}

_CARD_WORD = {"it": "Carta", "en": "Card"}


def describe_payment_method(token: str | None, language: str = "it") -> str:
    """A masked, human description of a stored token for emails: ``Visa •••• 4242``, ``PayPal``.

    Never returns the token itself.  A real Stripe or PayPal card token does not
    carry the brand or the last digits, so it is described as "Carta" / "Card".
    """
    card = _CARD_WORD.get(language, _CARD_WORD["en"])
    if not token:
        return "—"
    pm = token.replace(":", ".").split(".")[-1]
    if pm in _KNOWN_CARDS:
        brand, last4 = _KNOWN_CARDS[pm]
        return f"{brand} •••• {last4}"
    lowered = token.lower()
    if lowered.startswith("paypal"):
        return "PayPal"
    return card
