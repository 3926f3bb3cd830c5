"""Refunds and webhook signatures: what the gateways add to charging.

A refund follows "intent, act, record" like a charge (``worker.gateways.base``):
the caller stores the refund with a deterministic idempotency key and commits,
then calls ``gateway.refund(..., idempotency_key=key)``; every adapter sends the
key as the gateway's own idempotency key, so asking again after a lost answer
never refunds twice.  ``reference`` is the payment to refund, as the gateway
named it when it took the money: a PaymentIntent (Stripe), a capture (PayPal),
a sandbox charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from worker.gateways.base import GatewayError


class RefundOutcome(str, Enum):
    SUCCEEDED = "succeeded"
    #: The gateway accepted the refund and is still working on it (a webhook or a later call settles it).
    PENDING = "pending"
    #: The gateway refused it (already refunded, more than was paid, a payment it does not know).
    FAILED = "failed"
    #: The answer was lost: ask again with the same idempotency key.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RefundResult:
    outcome: RefundOutcome
    #: The gateway's refund id, when known.
    reference: str | None
    #: A short, log-safe explanation.
    message: str


class WebhookRefused(GatewayError):
    """A webhook whose signature (or body) did not verify: answer 400 and change nothing."""


class WebhookUnverifiable(GatewayError):
    """The gateway could not be asked to verify a webhook now: answer 503 so that it sends it again."""


#: Stripe's refund reasons (``reason`` of ``POST /v1/refunds``), by the kind of our refund.
STRIPE_REFUND_REASONS = {"automatic": "duplicate", "requested": "requested_by_customer"}
