"""The one small protocol every payment gateway adapter follows.

A charge is always *off-session* and *merchant-initiated*: the holder is not
there, the stored card or PayPal account is charged on the strength of the
agreement made when auto-renew was switched on.

Callers (the charge service) follow "intent, act, record":

1. store a charge intent row with a deterministic ``idempotency_key`` and commit;
2. ``gateway.charge(..., idempotency_key=key)``;
3. record the :class:`ChargeResult`.

When step 2 answers :attr:`ChargeOutcome.UNKNOWN` (timeout, 5xx, connection
reset, malformed answer) or the process dies before step 3, the intent is
reconciled with ``gateway.lookup(key)``: ``None`` means no money moved under
that key (the gateway never saw it, or saw it and charged nothing), so
charging again with the *same* key is safe; anything else is the gateway's own
answer.  Every adapter sends the key to the gateway as its idempotency key, so
even a blind retry with the same key never charges twice.

Keys.  A gateway answers a repeated key with the *first* result, a decline
included.  So a retry of a soft decline (dunning) needs a new key per attempt,
e.g. ``renewal:{mailbox_id}:{expires_on}:{attempt}``, and a new attempt may
start only once the previous one is settled (not UNKNOWN).  Gateways forget
keys after a while (Stripe: 24 hours; PayPal: 6 hours), so reconcile UNKNOWN
intents within minutes, not on the next day's run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import Protocol, runtime_checkable


class ChargeOutcome(str, Enum):
    SUCCEEDED = "succeeded"
    #: Worth retrying later (insufficient funds, issuer temporarily unavailable...).
    SOFT_DECLINE = "soft_decline"
    #: Not worth retrying (stolen/lost card, generic decline, expired card, closed account...).
    HARD_DECLINE = "hard_decline"
    #: The issuer wants the holder present (3-D Secure / PayPal payer action): not retried.
    REQUIRES_AUTHENTICATION = "requires_authentication"
    #: The answer was lost (timeout, 5xx, connection reset, unreadable answer): reconcile with ``lookup``.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ChargeResult:
    outcome: ChargeOutcome
    #: The gateway's id for the charge (PaymentIntent id, PayPal order id, sandbox reference), when known.
    reference: str | None
    #: A short, log-safe explanation (never a full token or secret).
    message: str
    #: The gateway's own reason, e.g. ``insufficient_funds``, ``expired_card``, ``INSTRUMENT_DECLINED``.
    decline_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome is ChargeOutcome.SUCCEEDED

    @property
    def is_final(self) -> bool:
        """True unless the outcome is unknown (then ``lookup`` must settle it)."""
        return self.outcome is not ChargeOutcome.UNKNOWN

    @property
    def retryable(self) -> bool:
        """A soft decline is retried on the dunning schedule; UNKNOWN is reconciled first."""
        return self.outcome in (ChargeOutcome.SOFT_DECLINE, ChargeOutcome.UNKNOWN)


class GatewayError(Exception):
    """A problem that is not a charge outcome: bad configuration, a misuse of the API."""


class IdempotencyConflict(GatewayError):
    """The idempotency key was already used with different parameters (amount, currency or method).

    This is a programming error in the caller (keys must be derived from the
    charge they protect); nothing was charged by this call.
    """


class InvalidPaymentMethod(GatewayError):
    """The stored token is not one this gateway can charge (e.g. a PayPal token given to Stripe)."""


@runtime_checkable
class PaymentGateway(Protocol):
    name: str

    def charge(
        self,
        *,
        payment_method: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        """Charge a stored method off-session, merchant-initiated.

        Returns UNKNOWN when the answer is lost.  Raises
        :class:`IdempotencyConflict` when ``idempotency_key`` was used with
        different parameters.  Never raises for declines or network trouble.
        """
        ...

    def lookup(self, idempotency_key: str) -> ChargeResult | None:
        """The gateway's record of the charge made with this key.

        ``None``: no money moved under this key, so charging with the same key
        is safe.  UNKNOWN: the gateway cannot tell now (unreachable, or the
        payment is still processing); ask again later.
        """
        ...

    def check_credentials(self) -> str:
        """Reach the gateway and prove the credentials work, moving no money.

        Returns a short description; raises :class:`GatewayError` with the reason.
        """
        ...

    def close(self) -> None:
        """Release connections (a no-op for gateways that hold none)."""
        ...


@dataclass(frozen=True)
class SavedMethod:
    """A payment method the holder entered on the gateway's hosted page, ready for off-session charges."""

    #: The stored token (``Mailbox.payment_method``).
    token: str
    #: The card's expiry (the month's last day), when the gateway tells it.
    card_expires_on: date | None = None


@runtime_checkable
class MethodSetup(Protocol):
    """A gateway whose hosted page takes a new payment method for auto-renew.

    The holder enters the method on the gateway's page (the sandbox's page is the link
    handler's own, as its checkout is); the page hands back a setup reference (the sandbox:
    the token chosen; Stripe: a SetupIntent's id; PayPal: a vault setup token), which
    :meth:`save_method` turns into the token to store.  A gateway without it leaves the
    method as it is.
    """

    def save_method(self, setup_reference: str) -> SavedMethod | None:
        """The method saved under ``setup_reference``, or None when the page did not complete
        (an unknown reference, a method the gateway refused)."""
        ...


@dataclass(frozen=True)
class AuthenticationStep:
    """Where the holder goes to authenticate a payment that asked for it (3-D Secure, PayPal's payer
    action), or the payment's answer when the gateway needs nobody (it went through at once)."""

    #: The gateway's page (Stripe's ``next_action.redirect_to_url.url``, PayPal's ``payer-action``
    #: link), or the sandbox's challenge page, a path of the link handler.
    url: str | None = None
    #: The answer when there is no page to go to: succeeded, declined, or unknown.
    result: ChargeResult | None = None


@runtime_checkable
class ChargeAuthentication(Protocol):
    """A gateway that brings a payment answered REQUIRES_AUTHENTICATION back on session.

    ``reference`` is the payment's id in the gateway (``ChargeResult.reference``: a PaymentIntent,
    a PayPal order, a sandbox charge).  :meth:`start_authentication` sends the holder to authenticate
    THAT payment, to come back to ``return_url``; :meth:`finish_authentication` says where it stands
    afterwards (PayPal: captures the approved order, once).  Neither charges anything new.
    """

    def start_authentication(self, *, reference: str, payment_method: str, return_url: str) -> AuthenticationStep: ...

    def finish_authentication(self, *, reference: str, idempotency_key: str) -> ChargeResult: ...


@runtime_checkable
class KeepsChargedMethod(Protocol):
    """A gateway whose checkout charge keeps its method for off-session charges (the sandbox, as
    Stripe's ``setup_future_usage`` does): the checkout stores the kept method, not the token typed."""

    def keep_charged_method(self, idempotency_key: str) -> SavedMethod | None:
        """The method kept by the successful charge made under ``idempotency_key`` (the same one at
        every call), or None when no charge succeeded under it."""
        ...


def mask_token(token: str | None) -> str:
    """A log-safe form of a stored token: its kind and last 4 characters."""
    if not token:
        return "<none>"
    if len(token) <= 8:
        return "…" + token[-2:]
    head = ""
    for separator in ("_", ".", ":"):
        index = token.find(separator)
        if 0 < index <= 6:
            head = token[: index + 1]
            break
    return f"{head}…{token[-4:]}"
