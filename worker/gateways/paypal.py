"""PayPal: Orders v2 over REST (httpx), charging a vaulted card or PayPal wallet.

**Why httpx and not ``paypal-server-sdk``:** the SDK (2.x) is generated code
whose ``Environment`` offers only PayPal's sandbox and production hosts, with
its own retry layer and model classes; pointing it at the tests' local server
means reaching into its internals.  The REST surface we need is four calls
(token, create order, capture, get order), small enough to own and to test over
real HTTP, and httpx gives us bounded timeouts and a pooled, thread-safe client.  That
client, its token and what an HTTP answer means are :mod:`worker.gateways.paypal_client`.

**The stored token** is ``paypal.<vault_id>`` (a vaulted PayPal wallet) or
``card.<vault_id>`` (a vaulted card), the PayPal payment-token id saved when
auto-renew was switched on (``:`` is read as the separator too).

**The charge** takes two steps, each with its own ``PayPal-Request-Id``:

1. ``POST /v2/checkout/orders`` (``intent=CAPTURE``, ``PayPal-Request-Id: <key>``)
   *without* a payment source.  This moves no money; it gives the order an id
   that the request id can always find again.  The key also goes into
   ``purchase_units[].custom_id``.
2. ``POST /v2/checkout/orders/{id}/capture`` (``PayPal-Request-Id: <key>-capture``)
   with ``payment_source.paypal.vault_id`` or ``payment_source.card.vault_id``
   and the stored-credential flags of a merchant-initiated, subsequent,
   recurring payment (``payment_initiator=MERCHANT``).

PayPal answers a repeated ``PayPal-Request-Id`` with the result of the first
request (it keeps request ids for 6 hours, up to 72 on request), so repeating
either step never creates a second order or a second capture.

**Lookup** repeats step 1 with the same request id and then reads the order
(``GET /v2/checkout/orders/{id}``).  If PayPal never saw the key, step 1 makes a
placeholder order, which moves no money, and lookup answers ``None``; a later
``charge`` with the same key finds that placeholder, corrects its amount with
``PATCH`` and captures it.  An order that exists but was never captured also
answers ``None``: no money moved under this key, so charging with the same key
is safe.  Reconcile UNKNOWN charges well within PayPal's retention window (6 h).

**Outcomes.**  Capture ``COMPLETED`` → SUCCEEDED.  Capture ``DECLINED``/``FAILED``:
processor code ``5120`` (insufficient funds) and other "try later" codes →
SOFT_DECLINE, the rest → HARD_DECLINE.  HTTP 422 ``INSTRUMENT_DECLINED``,
``TRANSACTION_REFUSED`` … → HARD_DECLINE; ``PAYER_ACTION_REQUIRED`` →
REQUIRES_AUTHENTICATION.  Timeouts, connection errors, 5xx, 429 and unreadable
answers → UNKNOWN.
"""

from __future__ import annotations

import hashlib
import json as json_module
import logging
from typing import Any

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
from worker.gateways.paypal_client import REFERENCE_ID, Lost, PayPalClient, Refused, read_json
from worker.gateways.refunds import RefundOutcome, RefundResult, WebhookUnverifiable

log = logging.getLogger(__name__)

#: ``custom_id`` of an order that a lookup created for a key PayPal had never seen.
LOOKUP_MARKER = "pec-renewal-lookup-placeholder"
ZERO_DECIMAL_CURRENCIES = frozenset({"HUF", "JPY", "TWD"})
#: Processor response codes worth retrying later (insufficient funds, issuer unavailable, try again).
SOFT_PROCESSOR_CODES = frozenset({"5120", "9520", "5650", "0500", "5180"})
HARD_ISSUES = frozenset({"INSTRUMENT_DECLINED", "TRANSACTION_REFUSED", "CARD_EXPIRED", "PAYMENT_DENIED"})
AUTH_ISSUES = frozenset({"PAYER_ACTION_REQUIRED", "ORDER_NOT_APPROVED"})


def parse_token(token: str) -> tuple[str, str]:
    """``paypal.<vault_id>`` → (``paypal``, id); ``card.<vault_id>`` → (``card``, id)."""
    kind, separator, vault_id = token.replace(":", ".").partition(".")
    if separator and kind in ("paypal", "card") and vault_id and vault_id.replace("-", "").replace("_", "").isalnum():
        return kind, vault_id
    raise InvalidPaymentMethod(f"{mask_token(token)} is not 'paypal.<vault id>' or 'card.<vault id>'")


def request_id(idempotency_key: str) -> str:
    """The ``PayPal-Request-Id`` for a key (at most 100 characters, so ``-capture`` fits in 108)."""
    if len(idempotency_key) <= 100:
        return idempotency_key
    return "sha256-" + hashlib.sha256(idempotency_key.encode()).hexdigest()


def money(amount_cents: int, currency: str) -> dict[str, str]:
    currency = currency.upper()
    if currency in ZERO_DECIMAL_CURRENCIES:
        return {"currency_code": currency, "value": str(amount_cents)}
    return {"currency_code": currency, "value": f"{amount_cents // 100}.{amount_cents % 100:02d}"}


class PayPalGateway(PayPalClient):
    name = "paypal"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        api_base: str = "https://api-m.paypal.com",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        pool_size: int = 32,
        return_url: str | None = None,
    ):
        """``return_url``: where PayPal sends the payer back after a payer action asked for by a
        charge (``payment_source.*.experience_context``); PayPal adds ``?token=<order id>``."""
        if not (client_id and client_secret):
            raise GatewayError(
                "the PayPal gateway needs PEC_RENEWAL_PAYPAL_CLIENT_ID and PEC_RENEWAL_PAYPAL_CLIENT_SECRET"
            )
        super().__init__(
            client_id=client_id,
            client_secret=client_secret,
            api_base=api_base,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            pool_size=pool_size,
        )
        self._return_url = return_url

    # -- the protocol ---------------------------------------------------------------------

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
            kind, vault_id = parse_token(payment_method)
        except InvalidPaymentMethod as error:
            return ChargeResult(ChargeOutcome.HARD_DECLINE, None, str(error), "invalid_payment_method")
        rid = request_id(idempotency_key)
        amount = money(amount_cents, currency)
        unit = {
            "reference_id": REFERENCE_ID,
            "custom_id": rid,
            "invoice_id": rid,
            "description": description[:127],
            "amount": amount,
        }
        order_id: str | None = None
        try:
            order = self._post("/v2/checkout/orders", {"intent": "CAPTURE", "purchase_units": [unit]}, rid)
            order_id = _order_id(order)
            found = (order.get("purchase_units") or [{}])[0]
            placeholder = found.get("custom_id") == LOOKUP_MARKER
            if not placeholder and _money_of(found) not in (None, (amount["currency_code"], amount["value"])):
                raise IdempotencyConflict(
                    f"PayPal order {order_id} was made with this key for {found['amount']}, not {amount}"
                )
            paid_with = order.get("payment_source") or {}
            used = (paid_with.get(kind) or {}).get("vault_id")
            if (paid_with and kind not in paid_with) or (used and used != vault_id):
                raise IdempotencyConflict(f"PayPal order {order_id} was paid with this key by another method")
            if order.get("status") == "COMPLETED":
                return self._settled(self._get_order(order_id))
            if placeholder:
                # A lookup made this order for a key PayPal had not seen: give it our amount.
                self._patch(order_id, unit)
            source = _payment_source(kind, vault_id, self._return_url)
            captured = self._post(
                f"/v2/checkout/orders/{order_id}/capture", {"payment_source": source}, rid + "-capture"
            )
        except Refused as refused:
            return self._refused(refused, order_id)
        except Lost as lost:
            log.warning("paypal: answer lost for %s: %s", mask_token(payment_method), lost)
            return ChargeResult(ChargeOutcome.UNKNOWN, order_id, f"no usable answer from PayPal ({lost})")
        result = self._settled(captured)
        log.info("paypal: order %s %s -> %s", order_id, mask_token(payment_method), result.outcome.value)
        return result

    def lookup(self, idempotency_key: str) -> ChargeResult | None:
        rid = request_id(idempotency_key)
        placeholder = {
            "intent": "CAPTURE",
            "purchase_units": [{"reference_id": REFERENCE_ID, "custom_id": LOOKUP_MARKER, "amount": money(1, "EUR")}],
        }
        try:
            order = self._post("/v2/checkout/orders", placeholder, rid)
            order = self._get_order(_order_id(order))
        except Lost as lost:
            return ChargeResult(ChargeOutcome.UNKNOWN, None, f"PayPal unavailable for the lookup ({lost})")
        except Refused as refused:
            raise GatewayError(f"PayPal refused the lookup: {refused}") from None
        status = order.get("status")
        if status in ("COMPLETED", "PAYER_ACTION_REQUIRED"):
            return self._settled(order)
        return None  # CREATED, SAVED, APPROVED, VOIDED: no money moved under this key

    def refund(
        self, *, reference: str, amount_cents: int, currency: str, idempotency_key: str, kind: str, reason: str
    ) -> RefundResult:
        """``POST /v2/payments/captures/{capture}/refund`` with ``PayPal-Request-Id``.  ``reference`` is a
        capture, or an order (what ``charge`` answers): its completed capture is refunded."""
        body = {"amount": money(amount_cents, currency), "note_to_payer": reason[:255]}
        del kind  # PayPal has no reason codes for a refund; the note says why
        try:
            capture = self._capture_of_order(reference) or reference
            answer = self._post(f"/v2/payments/captures/{capture}/refund", body, request_id(idempotency_key))
        except Refused as refused:
            # CAPTURE_FULLY_REFUNDED, REFUND_AMOUNT_EXCEEDED, INVALID_RESOURCE_ID...: nothing refunded by this call.
            return RefundResult(RefundOutcome.FAILED, None, f"PayPal refused the refund ({refused.issue})")
        except Lost as lost:
            return RefundResult(RefundOutcome.UNKNOWN, None, f"no usable answer from PayPal ({lost})")
        status = answer.get("status")
        outcome = {
            "COMPLETED": RefundOutcome.SUCCEEDED,
            "PENDING": RefundOutcome.PENDING,
            "CANCELLED": RefundOutcome.FAILED,
            "FAILED": RefundOutcome.FAILED,
        }.get(status, RefundOutcome.UNKNOWN)
        log.info("paypal: refund %s of capture %s -> %s", answer.get("id"), reference, outcome.value)
        return RefundResult(outcome, answer.get("id"), f"refund {status}")

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
        """An order (Orders v2, ``intent=CAPTURE``) with our return and cancel URLs; the holder
        approves it at the ``payer-action`` link (``user_action=CONTINUE``: PayPal says "Continue"
        and our return page asks for the final click, which captures).  ``save_method``: the account is stored in
        PayPal's vault when the payment succeeds (``store_in_vault=ON_SUCCESS``)."""
        del email  # the payer logs in to PayPal
        paypal: dict[str, Any] = {
            "experience_context": {
                "return_url": success_url,
                "cancel_url": cancel_url,
                "user_action": "CONTINUE",
                "shipping_preference": "NO_SHIPPING",
                "locale": "en-GB" if language == "en" else "it-IT",
            }
        }
        if save_method:
            paypal["attributes"] = {"vault": {"store_in_vault": "ON_SUCCESS", "usage_type": "MERCHANT"}}
        body = {
            "intent": "CAPTURE",
            "purchase_units": [
                {
                    "reference_id": REFERENCE_ID,
                    "custom_id": order_number,
                    "invoice_id": order_number,
                    "description": description[:127],
                    "amount": money(amount_cents, currency),
                }
            ],
            "payment_source": {"paypal": paypal},
        }
        try:
            order = self._post("/v2/checkout/orders", body, request_id(idempotency_key))
        except (Lost, Refused) as error:
            raise GatewayError(f"PayPal did not open the checkout ({error})") from None
        link = next(
            (item.get("href") for item in order.get("links") or [] if item.get("rel") in ("payer-action", "approve")),
            None,
        )
        if not link:
            raise GatewayError("PayPal's order has no approve link")
        return HostedCheckout(_order_id(order), link)

    def checkout_status(self, reference: str) -> HostedPayment:
        """Capture the approved order ``reference`` (``PayPal-Request-Id: capture-<order>``, so a
        repeated return captures once) and say what happened."""
        try:
            order = self._post(f"/v2/checkout/orders/{reference}/capture", {}, f"capture-{reference}")
        except Refused as refused:
            if refused.issue == "ORDER_ALREADY_CAPTURED":
                try:
                    order = self._get_order(reference)
                except (Lost, Refused) as error:
                    raise GatewayError(f"PayPal did not answer ({error})") from None
            elif refused.issue in ("ORDER_NOT_APPROVED", "PAYER_ACTION_REQUIRED"):
                return HostedPayment(HostedStatus.OPEN, detail=refused.issue)
            else:
                return HostedPayment(HostedStatus.FAILED, detail=refused.issue)
        except Lost as lost:
            raise GatewayError(f"PayPal did not answer ({lost})") from None
        unit = (order.get("purchase_units") or [{}])[0] or {}
        captures = (unit.get("payments") or {}).get("captures") or []
        capture = next((c for c in captures if c.get("status") == "COMPLETED"), captures[-1] if captures else {})
        status = {"COMPLETED": HostedStatus.PAID, "PENDING": HostedStatus.PENDING}.get(
            capture.get("status"), HostedStatus.FAILED
        )
        value = capture.get("amount") or unit.get("amount") or {}
        vault = (((order.get("payment_source") or {}).get("paypal") or {}).get("attributes") or {}).get("vault") or {}
        token = f"paypal.{vault['id']}" if vault.get("id") and vault.get("status") == "VAULTED" else None
        cents, _, currency = _cents_of(value)
        return HostedPayment(
            status,
            order_number=capture.get("custom_id") or unit.get("custom_id"),
            payment_reference=capture.get("id"),
            amount_cents=cents,
            currency=currency,
            payment_token=token,
            detail=(capture.get("processor_response") or {}).get("response_code"),
        )

    def _capture_of_order(self, reference: str) -> str | None:
        """The completed capture of the order ``reference``; None when it is not an order."""
        try:
            order = self._get_order(reference)
        except Refused as refused:
            if refused.status == 404:
                return None
            raise
        units = order.get("purchase_units") or [{}]
        captures = ((units[0] or {}).get("payments") or {}).get("captures") or []
        return next((c.get("id") for c in captures if c.get("status") == "COMPLETED"), None)

    def start_method_setup(
        self, *, success_url: str, cancel_url: str, idempotency_key: str, language: str, label: str
    ) -> HostedCheckout:
        """A vault setup token (``POST /v3/vault/setup-tokens``) for a PayPal account, approved by the
        payer at its ``approve`` link; PayPal then sends them to ``success_url`` with
        ``approval_token_id`` (the setup token)."""
        del label  # PayPal's vault keeps no description of ours
        body = {
            "payment_source": {
                "paypal": {
                    "usage_type": "MERCHANT",
                    "experience_context": {
                        "return_url": success_url,
                        "cancel_url": cancel_url,
                        "shipping_preference": "NO_SHIPPING",
                        "locale": "en-GB" if language == "en" else "it-IT",
                    },
                }
            }
        }
        try:
            token = self._post("/v3/vault/setup-tokens", body, request_id(idempotency_key))
        except (Lost, Refused) as error:
            raise GatewayError(f"PayPal did not open the setup page ({error})") from None
        link = next((item.get("href") for item in token.get("links") or [] if item.get("rel") == "approve"), None)
        if not link or not isinstance(token.get("id"), str):
            raise GatewayError("PayPal's setup token has no approve link")
        return HostedCheckout(token["id"], link)

    def save_method(self, setup_reference: str) -> SavedMethod | None:
        """The approved setup token ``setup_reference`` made a payment token (``POST
        /v3/vault/payment-tokens``, its request id derived from the setup token, so asking again
        makes one): ``paypal.<payment token>``.  None when PayPal refuses it (not approved, unknown)."""
        body = {"payment_source": {"token": {"id": setup_reference, "type": "SETUP_TOKEN"}}}
        try:
            token = self._post("/v3/vault/payment-tokens", body, request_id(f"payment-token-{setup_reference}"))
        except Refused:
            return None
        except Lost as error:
            raise GatewayError(f"PayPal did not answer ({error})") from None
        vault_id = token.get("id")
        if not isinstance(vault_id, str) or not (token.get("payment_source") or {}).get("paypal"):
            return None
        return SavedMethod(f"paypal.{vault_id}")

    def verify_webhook(self, headers: dict[str, str], body: bytes, webhook_id: str) -> bool:
        """PayPal's answer to ``POST /v1/notifications/verify-webhook-signature`` for a webhook:
        True for ``SUCCESS``.  ``headers``: the notification's, lower-cased; ``body``: the event
        exactly as PayPal posted it (sent back as it came, since PayPal signs those bytes: a
        re-serialised event could differ).  Raises :class:`WebhookUnverifiable` when PayPal cannot
        be asked now."""
        names = ("auth-algo", "cert-url", "transmission-id", "transmission-sig", "transmission-time")
        values = {name: headers.get("paypal-" + name) for name in names}
        if not all(values.values()):
            return False
        fields = {name.replace("-", "_"): value for name, value in values.items()}
        fields["webhook_id"] = webhook_id
        request = json_module.dumps(fields)[:-1].encode() + b', "webhook_event": ' + body.strip() + b"}"
        try:
            answer = read_json(self._send("POST", "/v1/notifications/verify-webhook-signature", content=request))
        except Refused:
            return False  # a malformed header value: PayPal answers 400
        except (Lost, GatewayError) as error:
            raise WebhookUnverifiable(f"PayPal could not verify the webhook ({error})") from None
        return answer.get("verification_status") == "SUCCESS"

    def check_credentials(self) -> str:
        try:
            self._access_token(renew=True)
        except Lost as error:
            raise GatewayError(f"PayPal did not answer ({error})") from None
        return "PayPal client credentials accepted"

    # -- the holder's action on session ----------------------------------------------------

    def start_authentication(self, *, reference: str, payment_method: str, return_url: str) -> AuthenticationStep:
        """The ``payer-action`` link of the order ``reference`` that asked for the payer's action
        (``GET /v2/checkout/orders/{id}``); PayPal sends the holder back to the charge's
        ``experience_context.return_url`` with ``?token=<order id>``.  Any other state is returned
        as the charge's answer."""
        del payment_method, return_url
        try:
            order = self._get_order(reference)
        except (Lost, Refused) as error:
            raise GatewayError(f"PayPal did not answer ({error})") from None
        for link in order.get("links") or []:
            if isinstance(link, dict) and link.get("rel") == "payer-action" and link.get("href"):
                if order.get("status") == "PAYER_ACTION_REQUIRED":
                    return AuthenticationStep(url=str(link["href"]))
        return AuthenticationStep(result=self._settled(order))

    def finish_authentication(self, *, reference: str, idempotency_key: str) -> ChargeResult:
        """Capture the order ``reference`` once the payer acted on it (``POST …/capture``, with a
        request id of its own: a second call, or the webhook's, never captures twice)."""
        try:
            order = self._get_order(reference)
            if order.get("status") in ("COMPLETED", "PAYER_ACTION_REQUIRED"):
                return self._settled(order)
            captured = self._post(
                f"/v2/checkout/orders/{reference}/capture", {}, request_id(idempotency_key) + "-payer"
            )
        except Refused as refused:
            return self._refused(refused, reference)
        except Lost as lost:
            return ChargeResult(ChargeOutcome.UNKNOWN, reference, f"no usable answer from PayPal ({lost})")
        return self._settled(captured)

    # -- classification -------------------------------------------------------------------

    def _settled(self, order: dict) -> ChargeResult:
        order_id = order.get("id")
        status = order.get("status")
        if status == "PAYER_ACTION_REQUIRED":
            return ChargeResult(
                ChargeOutcome.REQUIRES_AUTHENTICATION,
                order_id,
                "PayPal asks for the payer's action",
                "PAYER_ACTION_REQUIRED",
            )
        units = order.get("purchase_units") or [{}]
        captures = ((units[0] or {}).get("payments") or {}).get("captures") or []
        if status != "COMPLETED" or not captures:
            return ChargeResult(ChargeOutcome.UNKNOWN, order_id, f"order is {status}")
        # A retried capture can list a declined attempt before the good one: any success wins.
        capture = next((c for c in captures if c.get("status") == "COMPLETED"), captures[-1])
        capture_status = capture.get("status")
        if capture_status == "COMPLETED":
            return ChargeResult(ChargeOutcome.SUCCEEDED, order_id, "capture completed")
        if capture_status in ("DECLINED", "FAILED"):
            code = (capture.get("processor_response") or {}).get("response_code")
            outcome = ChargeOutcome.SOFT_DECLINE if code in SOFT_PROCESSOR_CODES else ChargeOutcome.HARD_DECLINE
            return ChargeResult(outcome, order_id, f"capture {capture_status.lower()} (processor code {code})", code)
        return ChargeResult(ChargeOutcome.UNKNOWN, order_id, f"capture is {capture_status}")

    def _refused(self, refused: Refused, order_id: str | None) -> ChargeResult:
        issue = refused.issue
        if issue == "ORDER_ALREADY_CAPTURED" and order_id:
            try:
                return self._settled(self._get_order(order_id))
            except (Lost, Refused) as error:
                return ChargeResult(
                    ChargeOutcome.UNKNOWN, order_id, f"order already captured; reading it failed ({error})"
                )
        if issue in AUTH_ISSUES:
            return ChargeResult(ChargeOutcome.REQUIRES_AUTHENTICATION, order_id, refused.description or issue, issue)
        if issue == "DUPLICATE_INVOICE_ID":
            return ChargeResult(ChargeOutcome.UNKNOWN, order_id, "PayPal reports this charge as a duplicate", issue)
        if refused.status in (400, 404, 422):
            return ChargeResult(ChargeOutcome.HARD_DECLINE, order_id, refused.description or issue, issue)
        raise GatewayError(f"PayPal refused the request: {refused}")


def _payment_source(kind: str, vault_id: str, return_url: str | None = None) -> dict:
    if kind == "card":
        stored = {"payment_initiator": "MERCHANT", "payment_type": "RECURRING", "usage": "SUBSEQUENT"}
        source = {"vault_id": vault_id, "stored_credential": stored}
    else:
        stored = {"payment_initiator": "MERCHANT", "usage": "SUBSEQUENT", "usage_pattern": "SUBSCRIPTION_PREPAID"}
        source = {"vault_id": vault_id, "stored_credential": stored}
    if return_url:
        # Where PayPal's payer-action page sends the holder back, should the payment need them.
        source["experience_context"] = {"return_url": return_url, "cancel_url": return_url}
    return {kind: source}


def _order_id(order: dict) -> str:
    order_id = order.get("id")
    if not isinstance(order_id, str) or not order_id:
        raise Lost("an order without an id")
    return order_id


def _money_of(unit: dict) -> tuple[str, str] | None:
    amount = unit.get("amount")
    if not isinstance(amount, dict):
        return None
    return amount.get("currency_code"), amount.get("value")


def _cents_of(amount: dict) -> tuple[int | None, str, str | None]:
    """``{"value": "30.50", "currency_code": "EUR"}`` → (3050, "30.50", "EUR")."""
    value = str(amount.get("value") or "")
    whole, _, fraction = value.partition(".")
    if not whole.isdigit() or not (fraction == "" or (fraction.isdigit() and len(fraction) <= 2)):
        return None, value, amount.get("currency_code")
    return int(whole) * 100 + int((fraction or "0").ljust(2, "0")), value, amount.get("currency_code")
