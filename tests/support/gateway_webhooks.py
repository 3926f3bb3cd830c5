"""Stripe and PayPal as the webhook and refund tests meet them: signed events, refunds, verification.

``StripeServer`` and ``PayPalServer`` extend the local servers of
``gateway_servers`` with the calls this part adds, in the shapes of the
gateways' API references:

- Stripe ``POST /v1/refunds`` (``payment_intent``, ``amount``, ``reason``,
  ``metadata[...]``; ``Idempotency-Key`` replays the first answer, another
  request under the same key is an ``idempotency_error``; more than is left is
  a 400 ``invalid_request_error`` with code ``amount_too_large`` (or
  ``charge_already_refunded``));
- PayPal ``POST /v2/payments/captures/{id}/refund`` (``PayPal-Request-Id``
  replays, 422 ``CAPTURE_FULLY_REFUNDED``) and ``POST
  /v1/notifications/verify-webhook-signature``, which answers
  ``verification_status`` SUCCESS only for the transmission signatures it made
  itself (:meth:`PayPalServer.signed_headers`).

Stripe's events are signed as Stripe signs them (:func:`stripe_signature`):
``t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload" with the endpoint's secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import zlib

from tests.support.gateway_servers import FakePayPal, FakeStripe

STRIPE_WEBHOOK_SECRET = "whsec_localtestsecret0123456789"
PAYPAL_WEBHOOK_ID = "8PT597110X687430LKGECATA"

_event_ids = itertools.count(1)


def stripe_signature(payload: bytes, secret: str = STRIPE_WEBHOOK_SECRET, *, at: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe sends with ``payload``."""
    timestamp = int(time.time()) if at is None else at
    signed = f"{timestamp}.".encode() + payload
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def stripe_event(event_type: str, item: dict, *, event_id: str | None = None) -> bytes:
    """A Stripe event (``object: event``) around ``item``, as the bytes Stripe posts."""
    event = {
        "id": event_id or f"evt_local{next(_event_ids):08d}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": item},
    }
    return json.dumps(event).encode()


def checkout_session(order_number: str, amount_cents: int, *, payment_intent: str, paid: bool = True, **extra) -> dict:
    """A Checkout Session (mode payment) as ``checkout.session.*`` events carry it."""
    session = {
        "id": f"cs_test_{payment_intent[3:]}",
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "client_reference_id": order_number,
        "amount_subtotal": amount_cents,
        "amount_total": amount_cents,
        "currency": "eur",
        "customer": None,
        "payment_intent": payment_intent,
        "payment_status": "paid" if paid else "unpaid",
        "metadata": {"order_number": order_number},
        "success_url": "https://rinnovi.example.test/ordine/x/esito",
        "cancel_url": "https://rinnovi.example.test/ordine/x",
    }
    session.update(extra)
    return session


class StripeServer(FakeStripe):
    """The local Stripe, with refunds of the PaymentIntents it holds (or is told about with :meth:`paid`)."""

    def __init__(self):
        super().__init__()
        self.refunds: dict[str, dict] = {}

    def paid(self, payment_intent: str, amount_cents: int, *, order_number: str | None = None) -> None:
        """A PaymentIntent that succeeded on Stripe's hosted page."""
        with self.lock:
            self.intents[payment_intent] = {
                "id": payment_intent,
                "object": "payment_intent",
                "amount": amount_cents,
                "amount_received": amount_cents,
                "currency": "eur",
                "status": "succeeded",
                "metadata": {"order_number": order_number} if order_number else {},
                "latest_charge": "ch_" + payment_intent[3:],
            }

    def refunded_amount(self, payment_intent: str) -> int:
        return sum(r["amount"] for r in self.refunds.values() if r["payment_intent"] == payment_intent)

    def respond(self, request):
        if request.method == "POST" and request.path == "/v1/refunds":
            if request.headers.get("authorization") != "Bearer sk_test_local":
                return 401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}, 0
            return self._refund(request)
        return super().respond(request)

    def _refund(self, request):
        params = request.form
        key = request.headers.get("idempotency-key")
        with self.lock:
            if key in self.idempotency:
                stored, status, body = self.idempotency[key]
                if stored != params:
                    return 400, {"error": {"type": "idempotency_error", "message": "Keys for idempotent requests "
                                 "can only be used with the same parameters they were first used with."}}, 0  # fmt: skip
                return status, body, 0
            status, body = self._make_refund(params)
            if key:
                self.idempotency[key] = (params, status, body)
        return status, body, 0

    def _make_refund(self, params):
        intent = self.intents.get(params.get("payment_intent", ""))
        if intent is None or intent["status"] != "succeeded":
            return 400, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                         "param": "payment_intent", "message": "No such payment_intent"}}  # fmt: skip
        left = intent["amount"] - self.refunded_amount(intent["id"])
        amount = int(params.get("amount") or left)
        if left <= 0:
            return 400, {"error": {"type": "invalid_request_error", "code": "charge_already_refunded",
                         "message": "Charge has already been refunded."}}  # fmt: skip
        if amount > left:
            return 400, {"error": {"type": "invalid_request_error", "code": "amount_too_large", "param": "amount",
                         "message": "Refund amount is greater than unrefunded amount on charge"}}  # fmt: skip
        refund = {
            "id": f"re_{next(self.ids):06d}",
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "charge": intent.get("latest_charge"),
            "reason": params.get("reason"),
            "metadata": {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")},
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        return 200, refund


def _canonical(event: dict) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


class PayPalServer(FakePayPal):
    """The local PayPal, with capture refunds and webhook signature verification."""

    def __init__(self, webhook_id: str = PAYPAL_WEBHOOK_ID):
        super().__init__()
        self.webhook_id = webhook_id
        self.signing_key = b"paypal-local-signing-key"
        self.refunds: dict[str, dict] = {}
        self.verifications = 0

    def captured(self, capture_id: str, amount_cents: int, *, order_number: str) -> dict:
        """A capture made on PayPal's approve page, as ``PAYMENT.CAPTURE.COMPLETED`` carries it."""
        capture = {
            "id": capture_id,
            "status": "COMPLETED",
            "amount": {"currency_code": "EUR", "value": f"{amount_cents // 100}.{amount_cents % 100:02d}"},
            "custom_id": order_number,
            "invoice_id": order_number,
            "final_capture": True,
        }
        with self.lock:
            self.orders["capture-" + capture_id] = {"id": "capture-" + capture_id, "status": "COMPLETED",
                                                    "purchase_units": [{"payments": {"captures": [capture]}}]}  # fmt: skip
        return capture

    def signed_headers(self, event: dict, *, transmission_id: str = "69cd13f0-d67a-11e5-baa3-778b53f4ae55") -> dict:
        """The PAYPAL-* headers PayPal sends with ``event`` to the webhook ``webhook_id``."""
        when = "2027-01-10T11:00:00Z"
        signed = f"{transmission_id}|{when}|{self.webhook_id}|{zlib.crc32(_canonical(event))}".encode()
        return {
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
            "PAYPAL-CERT-URL": "https://api-m.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270",
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-SIG": hmac.new(self.signing_key, signed, hashlib.sha256).hexdigest(),
            "PAYPAL-TRANSMISSION-TIME": when,
        }

    def respond(self, request):
        path = request.path
        if request.method == "POST" and path == "/v1/notifications/verify-webhook-signature":
            if (request.headers.get("authorization") or "").removeprefix("Bearer ") not in self.tokens:
                return 401, {"error": "invalid_token", "error_description": "Token signature verification failed"}, 0
            return self._verify(request.json)
        if request.method == "POST" and path.startswith("/v2/payments/captures/") and path.endswith("/refund"):
            if (request.headers.get("authorization") or "").removeprefix("Bearer ") not in self.tokens:
                return 401, {"error": "invalid_token"}, 0
            capture_id = path[len("/v2/payments/captures/") : -len("/refund")]
            return self._idempotent(request, lambda r: self._refund(capture_id, r))
        return super().respond(request)

    def _verify(self, body):
        required = ("auth_algo", "cert_url", "transmission_id", "transmission_sig", "transmission_time", "webhook_id")
        missing = [name for name in (*required, "webhook_event") if not body.get(name)]
        if missing:
            return 400, {"name": "VALIDATION_ERROR", "message": "Invalid request - see details",
                         "details": [{"field": missing[0], "issue": "MISSING_REQUIRED_PARAMETER"}]}, 0  # fmt: skip
        self.verifications += 1
        signed = (
            f"{body['transmission_id']}|{body['transmission_time']}|{body['webhook_id']}|"
            f"{zlib.crc32(_canonical(body['webhook_event']))}"
        ).encode()
        expected = hmac.new(self.signing_key, signed, hashlib.sha256).hexdigest()
        good = body["webhook_id"] == self.webhook_id and hmac.compare_digest(expected, body["transmission_sig"])
        return 200, {"verification_status": "SUCCESS" if good else "FAILURE"}, 0

    def _find_capture(self, capture_id):
        for order in self.orders.values():
            for unit in order.get("purchase_units") or []:
                for capture in (unit.get("payments") or {}).get("captures") or []:
                    if capture.get("id") == capture_id and capture.get("status") == "COMPLETED":
                        return capture
        return None

    def _refund(self, capture_id, request):
        capture = self._find_capture(capture_id)
        if capture is None:
            return 404, {"name": "RESOURCE_NOT_FOUND", "details": [{"issue": "INVALID_RESOURCE_ID"}]}, 0, None
        paid = int(round(float(capture["amount"]["value"]) * 100))
        refunded = sum(r["cents"] for r in self.refunds.values() if r["capture"] == capture_id)
        amount = request.json.get("amount") or capture["amount"]
        cents = int(round(float(amount["value"]) * 100))
        if refunded >= paid:
            return 422, {"name": "UNPROCESSABLE_ENTITY",
                         "details": [{"issue": "CAPTURE_FULLY_REFUNDED"}]}, 0, None  # fmt: skip
        if cents > paid - refunded:
            return 422, {"name": "UNPROCESSABLE_ENTITY",
                         "details": [{"issue": "REFUND_AMOUNT_EXCEEDED"}]}, 0, None  # fmt: skip
        refund_id = f"1JU{next(self.ids):014d}"
        self.refunds[refund_id] = {"capture": capture_id, "cents": cents}
        body = {
            "id": refund_id,
            "status": "COMPLETED",
            "amount": amount,
            "links": [{"rel": "up", "method": "GET", "href": f"{self.url}/v2/payments/captures/{capture_id}"}],
        }
        return 201, body, 0, None


def paypal_event(event_type: str, resource: dict, *, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"WH-LOCAL-{next(_event_ids):08d}",
        "event_version": "1.0",
        "create_time": "2027-01-10T11:00:00.000Z",
        "resource_type": "dispute" if event_type.startswith("CUSTOMER.DISPUTE") else "capture",
        "event_type": event_type,
        "summary": event_type,
        "resource": resource,
    }


class HostedStripe(StripeServer):
    """The local Stripe with Customers and Checkout Sessions (mode payment, and mode setup whose
    SetupIntent saves a card), and the holder's side of the hosted page: :meth:`pay` (the card is
    accepted), :meth:`set_up` (a card saved) and :meth:`expire`."""

    def __init__(self):
        super().__init__()
        self.sessions: dict[str, dict] = {}
        self.setup_intents: dict[str, dict] = {}
        self.payment_methods: dict[str, dict] = {}

    def respond(self, request):
        if request.headers.get("authorization") == "Bearer sk_test_local":
            if request.method == "POST" and request.path == "/v1/customers":
                return self._keyed(request, lambda params: (200, {"id": f"cus_{next(self.ids):06d}", "object": "customer",
                                                              "email": params.get("email")}))  # fmt: skip
            if request.method == "POST" and request.path == "/v1/checkout/sessions":
                return self._keyed(request, self._new_session)
            if request.method == "GET" and request.path.startswith("/v1/checkout/sessions/"):
                return self._read_session(request)
        return super().respond(request)

    def _keyed(self, request, make):
        params, key = request.form, request.headers.get("idempotency-key")
        with self.lock:
            if key in self.idempotency:
                stored, status, body = self.idempotency[key]
                if stored != params:
                    return 400, {"error": {"type": "idempotency_error", "message": "Keys for idempotent requests "
                                 "can only be used with the same parameters they were first used with."}}, 0  # fmt: skip
                return status, body, 0
            status, body = make(params)
            if key:
                self.idempotency[key] = (params, status, body)
        return status, body, 0

    def _new_session(self, params):
        if params.get("mode") == "setup":
            return self._new_setup_session(params)
        if params.get("mode") != "payment" or "{CHECKOUT_SESSION_ID}" not in params.get("success_url", ""):
            return 400, {"error": {"type": "invalid_request_error", "message": "bad session"}}
        session_id = f"cs_test_{next(self.ids):06d}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "client_reference_id": params.get("client_reference_id"),
            "amount_total": int(params["line_items[0][price_data][unit_amount]"]),
            "currency": params["line_items[0][price_data][currency]"],
            "customer": params.get("customer"),
            "payment_intent": None,
            "metadata": {"order_number": params.get("metadata[order_number]")},
            "success_url": params["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id),
            "cancel_url": params["cancel_url"],
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        return 200, session

    def _new_setup_session(self, params):
        """``mode=setup``: ``currency`` is required without ``payment_method_types``, and so is the
        Customer the card is saved to (Checkout's setup mode creates none)."""
        if (
            not params.get("currency")
            or not params.get("customer")
            or "{CHECKOUT_SESSION_ID}" not in params.get("success_url", "")
        ):
            return 400, {"error": {"type": "invalid_request_error", "message": "bad setup session"}}
        session_id = f"cs_test_{next(self.ids):06d}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "setup",
            "status": "open",
            "payment_status": "no_payment_required",
            "currency": params["currency"],
            "customer": params["customer"],
            "setup_intent": f"seti_{next(self.ids):06d}",
            "payment_intent": None,
            "success_url": params["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id),
            "cancel_url": params["cancel_url"],
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        self.setup_intents[session["setup_intent"]] = {
            "id": session["setup_intent"], "object": "setup_intent", "status": "requires_payment_method",
            "customer": params["customer"], "usage": "off_session", "payment_method": None,
        }  # fmt: skip
        return 200, session

    def set_up(self, session_id: str, payment_method: str = "pm_card_visa", *, exp: tuple[int, int] = (8, 2031)) -> str:
        """The holder saves a card on Stripe's setup page: the SetupIntent succeeds with a PaymentMethod
        attached to the session's Customer; the success URL Stripe sends them to."""
        with self.lock:
            session = self.sessions[session_id]
            session.update(status="complete")
            self.payment_methods[payment_method] = {
                "id": payment_method, "object": "payment_method", "type": "card", "customer": session["customer"],
                "card": {"brand": "visa", "last4": "4242", "exp_month": exp[0], "exp_year": exp[1]},
            }  # fmt: skip
            self.setup_intents[session["setup_intent"]].update(status="succeeded", payment_method=payment_method)
            return session["success_url"]

    def _read_session(self, request):
        session = self.sessions.get(request.path.rsplit("/", 1)[1])
        if session is None:
            return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                         "message": "No such checkout.session"}}, 0  # fmt: skip
        body = dict(session)
        expand = {value for key, value in request.query.items() if key.startswith("expand[")}
        if "setup_intent" in expand and session.get("setup_intent"):
            intent = dict(self.setup_intents[session["setup_intent"]])
            if "setup_intent.payment_method" in expand and intent["payment_method"]:
                intent["payment_method"] = self.payment_methods[intent["payment_method"]]
            body["setup_intent"] = intent
        if request.query.get("expand[0]") == "payment_intent" and session["payment_intent"]:
            body["payment_intent"] = self.intents[session["payment_intent"]]
        return 200, body, 0

    def pay(self, session_id: str, payment_method: str = "pm_card_visa") -> dict:
        """The holder pays on Stripe's page: a succeeded PaymentIntent; the session, complete and paid."""
        with self.lock:
            session = self.sessions[session_id]
            intent_id = f"pi_{next(self.ids):06d}"
            session.update(status="complete", payment_status="paid", payment_intent=intent_id)
        self.paid(intent_id, session["amount_total"], order_number=session["client_reference_id"])
        self.intents[intent_id].update(payment_method=payment_method, customer=session["customer"])
        return session

    def expire(self, session_id: str) -> None:
        with self.lock:
            self.sessions[session_id].update(status="expired")


class HostedPayPal(PayPalServer):
    """The local PayPal with orders the payer approves on PayPal's page (:meth:`approve`), captured
    without a payment source, and accounts stored in the vault when asked; and the vault's setup
    tokens (``/v3/vault/setup-tokens``) the payer approves (:meth:`approve_setup`), made payment tokens
    (``/v3/vault/payment-tokens``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup_tokens: dict[str, dict] = {}
        self.payment_tokens: dict[str, dict] = {}

    def respond(self, request):
        token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        if request.path.startswith("/v3/vault/") and token in self.tokens and request.method == "POST":
            if request.path == "/v3/vault/setup-tokens":
                return self._idempotent(request, self._new_setup_token)
            if request.path == "/v3/vault/payment-tokens":
                return self._idempotent(request, self._new_payment_token)
        return super().respond(request)

    def _new_setup_token(self, request):
        paypal = (request.json.get("payment_source") or {}).get("paypal") or {}
        context = paypal.get("experience_context") or {}
        if paypal.get("usage_type") != "MERCHANT" or not context.get("return_url") or not context.get("cancel_url"):
            return 400, {"name": "INVALID_REQUEST", "details": [{"issue": "MISSING_REQUIRED_PARAMETER"}]}, 0, None
        token_id = f"{next(self.ids):017d}ST"
        token = {
            "id": token_id,
            "customer": {"id": f"CUS{next(self.ids):08d}"},
            "status": "PAYER_ACTION_REQUIRED",
            "payment_source": {"paypal": {"usage_type": "MERCHANT", "experience_context": context}},
            "links": [
                {"href": f"https://www.sandbox.paypal.com/agreements/approve?approval_session_id={token_id}",
                 "rel": "approve", "method": "GET"},
                {"href": f"{self.url}/v3/vault/setup-tokens/{token_id}", "rel": "self", "method": "GET"},
            ],
        }  # fmt: skip
        self.setup_tokens[token_id] = token
        return 201, token, 0, None

    def approve_setup(self, token_id: str) -> str:
        """The payer approves on PayPal's page; the return URL PayPal sends them to."""
        with self.lock:
            token = self.setup_tokens[token_id]
            token["status"] = "APPROVED"
            return_url = token["payment_source"]["paypal"]["experience_context"]["return_url"]
            return f"{return_url}?approval_token_id={token_id}&approval_session_id=SESS{token_id}"

    def _new_payment_token(self, request):
        source = (request.json.get("payment_source") or {}).get("token") or {}
        setup = self.setup_tokens.get(source.get("id"))
        if source.get("type") != "SETUP_TOKEN" or setup is None:
            return 404, {"name": "RESOURCE_NOT_FOUND", "details": [{"issue": "INVALID_RESOURCE_ID"}]}, 0, None
        if setup["status"] != "APPROVED":
            return 422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "SETUP_TOKEN_NOT_APPROVED"}]}, 0, None
        payment_token = {
            "id": f"{next(self.ids):08d}pt",
            "customer": setup["customer"],
            "payment_source": {"paypal": {"email_address": "payer@example.it", "usage_type": "MERCHANT"}},
            "links": [],
        }
        self.payment_tokens[payment_token["id"]] = payment_token
        return 201, payment_token, 0, None

    def _create(self, request):
        status, order, delay, wire = super()._create(request)
        paypal = (request.json.get("payment_source") or {}).get("paypal")
        if paypal:
            order["status"] = "PAYER_ACTION_REQUIRED"
            order["hosted"] = paypal
            order["links"] = [
                {"rel": "self", "href": f"{self.url}/v2/checkout/orders/{order['id']}", "method": "GET"},
                {"rel": "payer-action", "href": f"https://www.paypal.com/checkoutnow?token={order['id']}",
                 "method": "GET"},
            ]  # fmt: skip
        return status, order, delay, wire

    def approve(self, order_id: str) -> str:
        """The payer approves on PayPal's page; the return URL PayPal sends them to."""
        with self.lock:
            order = self.orders[order_id]
            order["status"] = "APPROVED"
            return f"{order['hosted']['experience_context']['return_url']}?token={order_id}&PayerID=PAYERLOCAL"

    def _capture(self, order, request):
        if "hosted" not in order or request.json.get("payment_source"):
            return super()._capture(order, request)
        if order["status"] == "COMPLETED":
            return 422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "ORDER_ALREADY_CAPTURED"}]}, 0, None
        if order["status"] != "APPROVED":
            return 422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "ORDER_NOT_APPROVED"}]}, 0, None
        unit = order["purchase_units"][0]
        capture = {"id": f"3C{next(self.ids):015d}", "status": "COMPLETED", "amount": unit["amount"],
                   "custom_id": unit.get("custom_id"), "invoice_id": unit.get("invoice_id")}  # fmt: skip
        self.captures.append((order["id"], {"paypal": {}}))
        order["status"] = "COMPLETED"
        unit["payments"] = {"captures": [capture]}
        source = {"email_address": "payer@example.it"}
        if (order["hosted"].get("attributes") or {}).get("vault", {}).get("store_in_vault") == "ON_SUCCESS":
            source["attributes"] = {"vault": {"id": f"VLT{next(self.ids):08d}", "status": "VAULTED",
                                              "customer": {"id": "CUSLOCAL"}}}  # fmt: skip
        order["payment_source"] = {"paypal": source}
        return 201, order, 0, None
