"""Stripe: PaymentIntents created and confirmed off-session, with the official ``stripe`` library.

**The stored token** (``Mailbox.payment_method``) is the Stripe PaymentMethod
saved when auto-renew was switched on.  A PaymentMethod that is attached to a
Customer (as every saved card is: Stripe lets a detached one be used once
only) must be charged together with that Customer, so the token is
``cus_<id>.pm_<id>`` (the import accepts ``.``; ``cus_<id>:pm_<id>`` is read
too).  A bare ``pm_<id>`` is sent without a customer.

**The charge** is one request, ``POST /v1/payment_intents`` with
``confirm=true`` and ``off_session=recurring``: the holder is not present
(off-session) and the charge is a merchant-initiated transaction of a
recurring agreement, which is how Stripe flags the stored-credential /
MIT indicators to the card networks.  The ``Idempotency-Key`` header is the
caller's key, and the key is also stored in ``metadata[idempotency_key]``.
Stripe keeps idempotency keys for at least 24 hours and replays the first
answer for the same key; the same key with other parameters is refused with an
``idempotency_error`` (raised here as :class:`IdempotencyConflict`).

**Outcomes.**  ``succeeded`` → SUCCEEDED.  A ``card_error`` (HTTP 402) is
classified by its ``decline_code``/``code``: ``authentication_required`` →
REQUIRES_AUTHENTICATION; the issuer's "try again later" family
(``insufficient_funds``, ``try_again_later``, ``issuer_not_available``,
``processing_error`` …) → SOFT_DECLINE; everything else (``generic_decline``,
``expired_card``, ``lost_card``, ``do_not_honor`` …) → HARD_DECLINE.  A
timeout, a connection error, a 5xx, a 429 or an unreadable body → UNKNOWN.

**Lookup** uses the Search API: ``metadata['idempotency_key']:'<key>'``.  Stripe
documents search as eventually consistent (normally under a minute), so
"not found" is reported as ``None`` only because charging again *with the same
key* is still safe: Stripe's idempotency layer replays the first charge.
"""

from __future__ import annotations

import calendar
import logging
from datetime import date
from typing import Any

import stripe

from worker.gateways.base import (
    AuthenticationStep,
    ChargeOutcome,
    ChargeResult,
    GatewayError,
    IdempotencyConflict,
    InvalidPaymentMethod,
    SavedMethod,
    mask_token,
)
from worker.gateways.hosted import HostedCheckout, HostedPayment, HostedStatus
from worker.gateways.refunds import STRIPE_REFUND_REASONS, RefundOutcome, RefundResult, WebhookRefused

log = logging.getLogger(__name__)

#: Decline codes worth retrying on the dunning schedule (Stripe's "try again later" family).
SOFT_DECLINE_CODES = frozenset(
    {
        "insufficient_funds",
        "try_again_later",
        "issuer_not_available",
        "processing_error",
        "reenter_transaction",
        "approve_with_id",
        "card_velocity_exceeded",
        "withdrawal_count_limit_exceeded",
        "rate_limit",
    }
)
AUTHENTICATION_CODES = frozenset({"authentication_required", "authentication_not_handled"})


def parse_token(token: str) -> tuple[str | None, str]:
    """``cus_X.pm_Y`` (or ``cus_X:pm_Y``) → (``cus_X``, ``pm_Y``); ``pm_Y`` → (None, ``pm_Y``)."""
    separator = ":" if ":" in token else "."
    if separator in token:
        customer, _, payment_method = token.partition(separator)
        if customer.startswith("cus_") and payment_method.startswith(("pm_", "card_", "src_")):
            return customer, payment_method
        raise InvalidPaymentMethod(f"{mask_token(token)} is not 'cus_….pm_…'")
    if token.startswith(("pm_", "card_", "src_")):
        return None, token
    raise InvalidPaymentMethod(f"{mask_token(token)} is not a Stripe PaymentMethod")


def classify_decline(code: str | None, decline_code: str | None) -> ChargeOutcome:
    if code in AUTHENTICATION_CODES or decline_code in AUTHENTICATION_CODES:
        return ChargeOutcome.REQUIRES_AUTHENTICATION
    if decline_code in SOFT_DECLINE_CODES or (decline_code is None and code in SOFT_DECLINE_CODES):
        return ChargeOutcome.SOFT_DECLINE
    return ChargeOutcome.HARD_DECLINE


class StripeGateway:
    name = "stripe"

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        pool_size: int = 32,
    ):
        if not api_key:
            raise GatewayError("the Stripe gateway needs PEC_RENEWAL_STRIPE_API_KEY")
        # stripe-python logs request bodies (payment method ids) at DEBUG and error
        # messages quoting them at INFO: keep its logger quiet unless configured.
        stripe_log = logging.getLogger("stripe")
        if stripe_log.level == logging.NOTSET:
            stripe_log.setLevel(logging.WARNING)
        # The stripe library's own retries stay off: a lost answer is UNKNOWN and the
        # caller reconciles it with lookup(), which keeps every call's duration bounded.
        self._http = stripe.RequestsClient(timeout=(connect_timeout, read_timeout))
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=self._http,
        )
        del pool_size  # requests keeps one pooled session per thread

    def charge(
        self,
        *,
        payment_method: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        if amount_cents <= 0:
            raise ValueError(f"amount_cents must be positive, not {amount_cents}")
        try:
            customer, pm = parse_token(payment_method)
        except InvalidPaymentMethod as error:
            return ChargeResult(ChargeOutcome.HARD_DECLINE, None, str(error), "invalid_payment_method")
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": currency.lower(),
            "payment_method": pm,
            "confirm": True,
            "off_session": "recurring",
            "description": description,
            "metadata": {"idempotency_key": idempotency_key},
        }
        if customer:
            params["customer"] = customer
        try:
            intent = self._client.v1.payment_intents.create(params, {"idempotency_key": idempotency_key})
        except stripe.CardError as error:
            return self._card_error(error)
        except stripe.IdempotencyError as error:
            raise IdempotencyConflict(f"Stripe refused the idempotency key: {error.user_message}") from None
        except stripe.InvalidRequestError as error:
            if error.param in ("payment_method", "customer") or error.code == "resource_missing":
                # The stored method no longer exists at Stripe (detached, deleted): permanent.
                # Stripe's message quotes the id: keep it out of what is stored and logged.
                return ChargeResult(
                    ChargeOutcome.HARD_DECLINE,
                    None,
                    "the stored payment method is unknown to Stripe",
                    error.code or "invalid_payment_method",
                )
            raise GatewayError(f"Stripe refused the request: {error.user_message}") from None
        except (stripe.AuthenticationError, stripe.PermissionError) as error:
            raise GatewayError(f"Stripe refused the credentials: {error.user_message}") from None
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as error:
            log.warning("stripe: answer lost for %s: %s", mask_token(payment_method), type(error).__name__)
            return ChargeResult(ChargeOutcome.UNKNOWN, None, f"no usable answer from Stripe ({type(error).__name__})")
        except stripe.StripeError as error:
            log.warning("stripe: unexpected error for %s: %s", mask_token(payment_method), type(error).__name__)
            return ChargeResult(ChargeOutcome.UNKNOWN, None, f"unexpected Stripe error ({type(error).__name__})")
        result = _from_intent(intent)
        log.info("stripe: %s %s -> %s", result.reference, mask_token(payment_method), result.outcome.value)
        return result

    def lookup(self, idempotency_key: str) -> ChargeResult | None:
        escaped = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        try:
            found = self._client.v1.payment_intents.search(
                {"query": f"metadata['idempotency_key']:'{escaped}'", "limit": 10}
            )
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as error:
            return ChargeResult(ChargeOutcome.UNKNOWN, None, f"Stripe search unavailable ({type(error).__name__})")
        except (stripe.AuthenticationError, stripe.PermissionError) as error:
            raise GatewayError(f"Stripe refused the credentials: {error.user_message}") from None
        intents = [
            intent
            for intent in (_plain(item) for item in _plain(found).get("data") or [])
            if (intent.get("metadata") or {}).get("idempotency_key") == idempotency_key
        ]
        if not intents:
            return None
        # One key makes one PaymentIntent; should there be more, a success wins.
        intents.sort(key=lambda intent: intent.get("status") != "succeeded")
        return _from_intent(intents[0])

    def start_authentication(self, *, reference: str, payment_method: str, return_url: str) -> AuthenticationStep:
        """Bring the PaymentIntent ``reference`` that asked for authentication back on session:
        ``POST /v1/payment_intents/{id}/confirm`` with its PaymentMethod and a ``return_url``
        (the holder is present now, so no ``off_session``).  Stripe answers ``requires_action``
        with ``next_action.redirect_to_url.url``, the issuer's 3-D Secure page, which sends the
        holder back to ``return_url``; any other answer is returned as it is."""
        try:
            _customer, pm = parse_token(payment_method)
        except InvalidPaymentMethod as error:
            return AuthenticationStep(
                result=ChargeResult(ChargeOutcome.HARD_DECLINE, reference, str(error), "invalid_payment_method")
            )
        try:
            intent = _plain(
                self._client.v1.payment_intents.confirm(reference, {"payment_method": pm, "return_url": return_url})
            )
        except stripe.CardError as error:
            return AuthenticationStep(result=self._card_error(error))
        except stripe.StripeError as error:
            raise GatewayError(f"Stripe did not confirm the payment ({type(error).__name__})") from None
        next_action = intent.get("next_action") or {}
        redirect = next_action.get("redirect_to_url") if isinstance(next_action, dict) else None
        if intent.get("status") == "requires_action" and isinstance(redirect, dict) and redirect.get("url"):
            return AuthenticationStep(url=str(redirect["url"]))
        return AuthenticationStep(result=_from_intent(intent))

    def finish_authentication(self, *, reference: str, idempotency_key: str) -> ChargeResult:
        """The PaymentIntent ``reference`` as Stripe has it after the holder's authentication (a read)."""
        del idempotency_key
        try:
            intent = self._client.v1.payment_intents.retrieve(reference)
        except stripe.StripeError as error:
            return ChargeResult(ChargeOutcome.UNKNOWN, reference, f"Stripe did not answer ({type(error).__name__})")
        return _from_intent(intent)

    def refund(
        self, *, reference: str, amount_cents: int, currency: str, idempotency_key: str, kind: str, reason: str
    ) -> RefundResult:
        """``POST /v1/refunds`` for the PaymentIntent ``reference``, with ``Idempotency-Key``."""
        params: dict[str, Any] = {
            "payment_intent": reference,
            "amount": amount_cents,
            "metadata": {"idempotency_key": idempotency_key, "reason": reason[:500]},
        }
        if kind in STRIPE_REFUND_REASONS:
            params["reason"] = STRIPE_REFUND_REASONS[kind]
        del currency  # a refund is in the currency of the payment
        try:
            refund = _plain(self._client.v1.refunds.create(params, {"idempotency_key": idempotency_key}))
        except stripe.IdempotencyError as error:
            raise IdempotencyConflict(f"Stripe refused the idempotency key: {error.user_message}") from None
        except stripe.InvalidRequestError as error:
            # charge_already_refunded, amount_too_large, resource_missing: nothing was refunded by this call.
            return RefundResult(RefundOutcome.FAILED, None, f"Stripe refused the refund ({error.code or 'invalid'})")
        except (stripe.AuthenticationError, stripe.PermissionError) as error:
            raise GatewayError(f"Stripe refused the credentials: {error.user_message}") from None
        except stripe.StripeError as error:
            return RefundResult(RefundOutcome.UNKNOWN, None, f"no usable answer from Stripe ({type(error).__name__})")
        status = refund.get("status")
        outcome = {
            "succeeded": RefundOutcome.SUCCEEDED,
            "pending": RefundOutcome.PENDING,
            "requires_action": RefundOutcome.PENDING,
            "failed": RefundOutcome.FAILED,
            "canceled": RefundOutcome.FAILED,
        }.get(status, RefundOutcome.UNKNOWN)
        log.info("stripe: refund %s of %s -> %s", refund.get("id"), reference, outcome.value)
        return RefundResult(outcome, refund.get("id"), f"refund {status}")

    def start_checkout(
        self,
        *,
        order_number: str,
        amount_cents: int,
        currency: str,
        description: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
        email: str,
        language: str,
        save_method: bool,
    ) -> HostedCheckout:
        """A Checkout Session in ``payment`` mode for one order (``client_reference_id`` = the order
        number).  ``save_method``: a Customer is created and the card kept for off-session charges
        (``payment_intent_data.setup_future_usage=off_session``).  Raises :class:`GatewayError`
        when Stripe cannot be reached or refuses."""
        intent_data: dict[str, Any] = {"description": description, "metadata": {"order_number": order_number}}
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": order_number,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": currency.lower(),
                        "unit_amount": amount_cents,
                        "product_data": {"name": description},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "locale": "en" if language == "en" else "it",
            "metadata": {"order_number": order_number},
            "payment_intent_data": intent_data,
        }
        try:
            if save_method:
                customer = self._client.v1.customers.create(
                    {"email": email, "metadata": {"order_number": order_number}},
                    {"idempotency_key": idempotency_key + ":customer"},
                )
                params["customer"] = _plain(customer)["id"]
                intent_data["setup_future_usage"] = "off_session"
            else:
                params["customer_email"] = email
            session = _plain(self._client.v1.checkout.sessions.create(params, {"idempotency_key": idempotency_key}))
        except stripe.StripeError as error:
            raise GatewayError(f"Stripe did not open the checkout ({type(error).__name__})") from None
        return HostedCheckout(session["id"], session["url"])

    def checkout_status(self, reference: str) -> HostedPayment:
        """The Checkout Session ``reference`` as Stripe has it now (a read: nothing changes)."""
        try:
            session = _plain(self._client.v1.checkout.sessions.retrieve(reference, {"expand": ["payment_intent"]}))
        except stripe.StripeError as error:
            raise GatewayError(f"Stripe did not answer ({type(error).__name__})") from None
        intent = session.get("payment_intent")
        intent = intent if isinstance(intent, dict) else {"id": intent}
        currency = session.get("currency")
        token = None
        if session.get("customer") and isinstance(intent.get("payment_method"), str):
            customer = session["customer"] if isinstance(session["customer"], str) else session["customer"]["id"]
            token = f"{customer}.{intent['payment_method']}"
        if session.get("payment_status") == "paid":
            status = HostedStatus.PAID
        elif session.get("status") == "expired":
            status = HostedStatus.FAILED
        elif session.get("status") == "complete":
            status = HostedStatus.PENDING
        else:
            status = HostedStatus.OPEN
        error = intent.get("last_payment_error") or {}
        return HostedPayment(
            status,
            order_number=session.get("client_reference_id"),
            payment_reference=intent.get("id"),
            amount_cents=session.get("amount_total"),
            currency=currency.upper() if isinstance(currency, str) else None,
            payment_token=token,
            detail=error.get("decline_code") or error.get("code"),
        )

    def start_method_setup(
        self, *, success_url: str, cancel_url: str, idempotency_key: str, language: str, label: str
    ) -> HostedCheckout:
        """A Checkout Session in ``setup`` mode for a new Customer: the holder enters a card on Stripe's
        page, its SetupIntent saves it for off-session charges (``usage=off_session``).  ``success_url``
        carries ``{CHECKOUT_SESSION_ID}``."""
        try:
            customer = self._client.v1.customers.create(
                {"description": label[:200], "metadata": {"mailbox": label[:500]}},
                {"idempotency_key": idempotency_key + ":customer"},
            )
            session = _plain(
                self._client.v1.checkout.sessions.create(
                    {
                        "mode": "setup",
                        "currency": "eur",
                        "customer": _plain(customer)["id"],
                        "success_url": success_url,
                        "cancel_url": cancel_url,
                        "locale": "en" if language == "en" else "it",
                        "setup_intent_data": {"description": f"Rinnovo automatico {label}"[:200]},
                        "metadata": {"mailbox": label[:500]},
                    },
                    {"idempotency_key": idempotency_key},
                )
            )
        except stripe.StripeError as error:
            raise GatewayError(f"Stripe did not open the setup page ({type(error).__name__})") from None
        return HostedCheckout(session["id"], session["url"])

    def save_method(self, setup_reference: str) -> SavedMethod | None:
        """The card of the setup session ``setup_reference`` once its SetupIntent succeeded:
        ``cus_….pm_…`` and the card's expiry (read from the PaymentMethod); None while it has not
        (an open or expired session, another mode).  A read: nothing changes at Stripe."""
        try:
            session = _plain(
                self._client.v1.checkout.sessions.retrieve(
                    setup_reference, {"expand": ["setup_intent", "setup_intent.payment_method"]}
                )
            )
        except stripe.InvalidRequestError:
            return None
        except stripe.StripeError as error:
            raise GatewayError(f"Stripe did not answer ({type(error).__name__})") from None
        intent = session.get("setup_intent")
        customer = session.get("customer")
        customer = customer.get("id") if isinstance(customer, dict) else customer
        if session.get("mode") != "setup" or not isinstance(intent, dict) or intent.get("status") != "succeeded":
            return None
        method = intent.get("payment_method")
        if not isinstance(method, dict) or not isinstance(customer, str) or not isinstance(method.get("id"), str):
            return None
        card = method.get("card") or {}
        expires = None
        if isinstance(card.get("exp_month"), int) and isinstance(card.get("exp_year"), int):
            month, year = card["exp_month"], card["exp_year"]
            expires = date(year, month, calendar.monthrange(year, month)[1])
        return SavedMethod(f"{customer}.{method['id']}", expires)

    @staticmethod
    def verify_webhook(payload: bytes, signature: str | None, secret: str) -> dict:
        """The event of a webhook, once ``stripe.Webhook.construct_event`` has verified its
        ``Stripe-Signature`` (HMAC-SHA256 of ``t.payload``, default tolerance); raises
        :class:`WebhookRefused` for a bad or stale signature or a body that is not an event."""
        try:
            event = stripe.Webhook.construct_event(payload, signature, secret)
        except stripe.SignatureVerificationError:
            raise WebhookRefused("the Stripe-Signature does not verify") from None
        except ValueError:
            raise WebhookRefused("the body is not a Stripe event") from None
        plain = _plain(event)
        if not isinstance(plain.get("id"), str) or not isinstance(plain.get("type"), str):
            raise WebhookRefused("the body is not a Stripe event")
        return plain

    def check_credentials(self) -> str:
        try:
            self._client.v1.balance.retrieve()
        except stripe.AuthenticationError:
            raise GatewayError("Stripe refused the API key") from None
        except stripe.StripeError as error:
            raise GatewayError(f"Stripe did not answer: {type(error).__name__}") from None
        return "Stripe API key accepted"

    def close(self) -> None:
        try:
            self._http.close()
        except Exception:  # pragma: no cover - closing is best effort
            pass

    def _card_error(self, error: stripe.CardError) -> ChargeResult:
        body = error.json_body if isinstance(error.json_body, dict) else {}
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        decline_code = detail.get("decline_code")
        intent = detail.get("payment_intent")
        reference = intent.get("id") if isinstance(intent, dict) else None
        outcome = classify_decline(error.code, decline_code)
        return ChargeResult(outcome, reference, error.user_message or "card declined", decline_code or error.code)


def _plain(value: Any) -> dict:
    """A plain dict from a StripeObject (which is no longer a dict in stripe-python 12+)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value if isinstance(value, dict) else {}


def _from_intent(intent: Any) -> ChargeResult:
    intent = _plain(intent)
    status = intent.get("status")
    reference = intent.get("id")
    if status == "succeeded":
        return ChargeResult(ChargeOutcome.SUCCEEDED, reference, "charge succeeded")
    if status == "requires_action":
        return ChargeResult(
            ChargeOutcome.REQUIRES_AUTHENTICATION,
            reference,
            "the card requires the holder's authentication",
            "authentication_required",
        )
    if status == "requires_payment_method":
        error = intent.get("last_payment_error") or {}
        code, decline_code = error.get("code"), error.get("decline_code")
        return ChargeResult(
            classify_decline(code, decline_code),
            reference,
            error.get("message") or "payment failed",
            decline_code or code,
        )
    if status == "canceled":
        return ChargeResult(ChargeOutcome.HARD_DECLINE, reference, "payment canceled", "canceled")
    # processing, requires_confirmation, requires_capture: not settled yet; look it up later.
    return ChargeResult(ChargeOutcome.UNKNOWN, reference, f"payment is {status}")
