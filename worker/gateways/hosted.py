"""The gateways' hosted pages: the holder pays on Stripe's or PayPal's page, never on ours.

Our pages stay free of JavaScript and card data never reaches our servers (PCI
DSS SAQ A).  An adapter that has hosted pages offers:

- ``start_checkout(...) -> HostedCheckout``: a Stripe Checkout Session (mode
  ``payment``) or a PayPal order (Orders v2) for one renewal order, with our
  return and cancel URLs; the holder is sent to ``HostedCheckout.url``;
- ``checkout_status(reference) -> HostedPayment``: what the gateway says of it
  now (Stripe: reading the session; PayPal: capturing the approved order, which
  is how PayPal takes the money, with a request id so it is done once).

The payment is registered under ``{gateway}:{payment_reference}`` (a
PaymentIntent, a PayPal capture), the same reference the webhooks use, so the
return page and the webhook register it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from worker.gateways.base import MethodSetup


class HostedStatus(str, Enum):
    PAID = "paid"
    #: Not settled yet (an asynchronous method, a capture PayPal holds): the webhook will say.
    PENDING = "pending"
    #: Declined, cancelled or expired: nothing was taken.
    FAILED = "failed"
    #: The holder has not finished on the gateway's page.
    OPEN = "open"


@dataclass(frozen=True)
class HostedCheckout:
    #: The gateway's id of the checkout: a Checkout Session id, a PayPal order id.
    reference: str
    #: Where the holder pays (Stripe's hosted page, PayPal's approve link).
    url: str


@dataclass(frozen=True)
class HostedPayment:
    status: HostedStatus
    order_number: str | None = None
    #: The gateway's id of the money: PaymentIntent (Stripe), capture (PayPal).
    payment_reference: str | None = None
    amount_cents: int | None = None
    currency: str | None = None
    #: The stored method for the next renewals, when the holder agreed to keep it: ``cus_….pm_…`` or
    #: ``paypal.<vault id>`` (what ``charge`` takes).
    payment_token: str | None = None
    #: A short, token-free word on a failure (a decline code, an issue).
    detail: str | None = None


@runtime_checkable
class HostedMethodSetup(MethodSetup, Protocol):
    """A gateway whose own hosted page takes a new method for auto-renew (Stripe: a Checkout Session in
    ``setup`` mode; PayPal: a vault setup token the payer approves).  The holder is sent to
    ``HostedCheckout.url``; back on our return page, :meth:`MethodSetup.save_method` turns
    ``HostedCheckout.reference`` into the stored token."""

    def start_method_setup(
        self, *, success_url: str, cancel_url: str, idempotency_key: str, language: str, label: str
    ) -> HostedCheckout:
        """Open the page; raises :class:`worker.gateways.base.GatewayError` when the gateway does not answer.
        ``label``: what the gateway's records name it after (the mailbox's address, never a token)."""
        ...
