"""Local HTTP servers that answer like Stripe and PayPal, for the adapters to talk to over real HTTP.

Each runs ``http.server.ThreadingHTTPServer`` on 127.0.0.1 with a random port in a
daemon thread, keeps the state a gateway keeps (PaymentIntents, orders,
idempotency keys / request ids), and logs every request so tests can assert
what was sent.  The payment method (Stripe) or vault id (PayPal) picks the
behaviour, including the ugly ones: a 500 after charging, an answer slower than
the client's timeout, and a body that is not JSON.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

SLOW_SECONDS = 1.5  # longer than the read timeout the tests give the adapters


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def json(self):
        return json.loads(self.body or b"null")


class _Server:
    def __init__(self):
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    {key.lower(): value for key, value in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                    dict(parse_qsl(parts.query)),
                )
                with owner.lock:
                    owner.requests.append(request)
                status, body, delay = owner.respond(request)
                if delay:
                    time.sleep(delay)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of a slow answer

            do_GET = do_POST = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def respond(self, request: Request) -> tuple[int, object, float]:
        raise NotImplementedError

    def sent(self, method: str, prefix: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]


# --------------------------------------------------------------------------- Stripe

STRIPE_DECLINES = {
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card", "Your card has expired."),
    "pm_card_chargeDeclinedLostCard": ("card_declined", "lost_card", "Your card was declined."),
    "pm_card_authenticationRequired": (
        "authentication_required",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}


class FakeStripe(_Server):
    """``POST /v1/payment_intents`` (confirm, off-session), ``GET /v1/payment_intents/search``, and
    the holder brought back on session: ``POST /v1/payment_intents/{id}/confirm`` with a
    ``return_url`` (``requires_action`` with ``next_action.redirect_to_url``), the issuer's page
    (:meth:`authenticate`), and ``GET /v1/payment_intents/{id}``."""

    def __init__(self):
        super().__init__()
        self.intents: dict[str, dict] = {}
        self.idempotency: dict[str, tuple[dict, int, object]] = {}
        self.ids = itertools.count(1)

    def charges_for(self, key: str) -> list[dict]:
        """The PaymentIntents that moved money for this idempotency key."""
        return [
            intent
            for intent in self.intents.values()
            if intent["metadata"].get("idempotency_key") == key and intent["status"] == "succeeded"
        ]

    def respond(self, request):
        if request.headers.get("authorization") != "Bearer sk_test_local":
            return 401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}, 0
        if request.method == "POST" and request.path == "/v1/payment_intents":
            return self._create(request)
        if request.method == "GET" and request.path == "/v1/payment_intents/search":
            return self._search(request)
        if request.path.startswith("/v1/payment_intents/"):
            intent_id, _, action = request.path[len("/v1/payment_intents/") :].partition("/")
            with self.lock:
                intent = self.intents.get(intent_id)
                if intent is None:
                    return (
                        404,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "code": "resource_missing",
                                "param": "intent",
                                "message": f"No such payment_intent: '{intent_id}'",
                            }
                        },
                        0,
                    )
                if request.method == "GET" and not action:
                    return 200, intent, 0
                if request.method == "POST" and action == "confirm":
                    return self._confirm_on_session(intent, request.form)
        if request.method == "GET" and request.path == "/v1/balance":
            return 200, {"object": "balance", "available": [], "pending": [], "livemode": False}, 0
        return 404, {"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}}, 0

    def _create(self, request):
        params = request.form
        key = request.headers.get("idempotency-key")
        with self.lock:
            if key in self.idempotency:
                stored_params, status, body = self.idempotency[key]
                if stored_params != params:
                    return (
                        400,
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                            }
                        },
                        0,
                    )
                return status, body, 0  # Stripe replays the first answer, whatever it was
            status, body, delay = self._confirm(params)
            if key:
                self.idempotency[key] = (params, status, body)
        if params.get("payment_method") == "pm_bad_json":
            return 200, b'{"id": "pi_truncated", "object": "payment_in', 0
        return status, body, delay

    def _confirm(self, params):
        pm = params.get("payment_method")
        if pm == "pm_missing":
            return (
                400,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "resource_missing",
                        "param": "payment_method",
                        "message": "No such PaymentMethod: 'pm_missing'",
                    }
                },
                0,
            )
        intent = {
            "id": f"pi_{next(self.ids):06d}",
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "currency": params["currency"],
            "customer": params.get("customer"),
            "payment_method": pm,
            "description": params.get("description"),
            "metadata": {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")},
            "status": "succeeded",
            "last_payment_error": None,
        }
        self.intents[intent["id"]] = intent
        if pm in STRIPE_DECLINES:
            code, decline_code, message = STRIPE_DECLINES[pm]
            error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message}
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = error
            return 402, {"error": {**error, "payment_intent": intent}}, 0
        if pm == "pm_server_error":
            return 500, {"error": {"type": "api_error", "message": "An unknown error occurred"}}, 0
        if pm == "pm_slow":
            return 200, intent, SLOW_SECONDS
        return 200, intent, 0

    def _confirm_on_session(self, intent, params):
        """A confirmation with the holder present: a card that wants 3-D Secure gets ``requires_action``
        and the issuer's page in ``next_action.redirect_to_url``; a succeeded intent cannot be confirmed."""
        if intent["status"] not in ("requires_payment_method", "requires_confirmation", "requires_action"):
            return (
                400,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "payment_intent_unexpected_state",
                        "message": f"This PaymentIntent's status is {intent['status']}.",
                        "payment_intent": intent,
                    }
                },
                0,
            )
        pm = params.get("payment_method") or intent["payment_method"]
        intent["payment_method"] = pm
        intent["last_payment_error"] = None
        if pm in ("pm_card_authenticationRequired", "pm_card_authenticationRequiredSetupForOffSession"):
            intent["status"] = "requires_action"
            intent["next_action"] = {
                "type": "redirect_to_url",
                "redirect_to_url": {"url": f"{self.url}/3ds/{intent['id']}", "return_url": params.get("return_url")},
            }
        elif pm in STRIPE_DECLINES:
            code, decline_code, message = STRIPE_DECLINES[pm]
            error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message}
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = error
            return 402, {"error": {**error, "payment_intent": intent}}, 0
        else:
            intent["status"] = "succeeded"
        return 200, intent, 0

    def authenticate(self, intent_id: str, *, approve: bool = True) -> str:
        """The holder's answer on the issuer's page; the ``return_url`` Stripe then sends them to."""
        with self.lock:
            intent = self.intents[intent_id]
            return_url = intent["next_action"]["redirect_to_url"]["return_url"]
            intent["next_action"] = None
            if approve:
                intent["status"] = "succeeded"
            else:
                intent["status"] = "requires_payment_method"
                intent["last_payment_error"] = {
                    "type": "invalid_request_error",
                    "code": "payment_intent_authentication_failure",
                    "message": "The provided PaymentMethod has failed authentication.",
                }
        status = "succeeded" if approve else "failed"
        return f"{return_url}?payment_intent={intent_id}&payment_intent_client_secret={intent_id}_secret_local&redirect_status={status}"

    def _search(self, request):
        query = request.query.get("query", "")
        prefix = "metadata['idempotency_key']:'"
        if not (query.startswith(prefix) and query.endswith("'")):
            return 400, {"error": {"type": "invalid_request_error", "message": "bad query"}}, 0
        key = query[len(prefix) : -1].replace("\\'", "'").replace("\\\\", "\\")
        with self.lock:
            data = [i for i in self.intents.values() if i["metadata"].get("idempotency_key") == key]
        return (
            200,
            {
                "object": "search_result",
                "data": data,
                "has_more": False,
                "next_page": None,
                "url": "/v1/payment_intents/search",
            },
            0,
        )


# --------------------------------------------------------------------------- PayPal

PAYPAL_CLIENT = ("client-local", "secret-local")


class FakePayPal(_Server):
    """OAuth2 client credentials, and Orders v2: create, get, patch, capture with a vault id.

    The vault id picks what the capture does: ``ok``; ``insufficient`` (capture
    DECLINED, processor code 5120); ``expired`` (DECLINED, 5400); ``declined``
    (422 INSTRUMENT_DECLINED); ``auth`` (422 PAYER_ACTION_REQUIRED); and
    ``error500`` / ``slow`` / ``badjson``, which capture the money and then
    lose the answer.
    """

    def __init__(self, token_lifetime: int = 32400):
        super().__init__()
        self.orders: dict[str, dict] = {}
        self.request_ids: dict[str, tuple[int, object]] = {}
        self.ids = itertools.count(1)
        self.tokens: set[str] = set()
        self.token_lifetime = token_lifetime
        self.captures: list[tuple[str, dict]] = []  # (order id, payment_source) of every capture that moved money

    def money_moved(self, order_id: str) -> int:
        return sum(1 for oid, _ in self.captures if oid == order_id)

    def respond(self, request):
        if request.path == "/v1/oauth2/token":
            return self._token(request)
        token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        if token not in self.tokens:
            return 401, {"error": "invalid_token", "error_description": "Token signature verification failed"}, 0
        path = request.path
        if request.method == "POST" and path == "/v2/checkout/orders":
            return self._idempotent(request, self._create)
        if path.startswith("/v2/checkout/orders/"):
            rest = path[len("/v2/checkout/orders/") :]
            order_id, _, action = rest.partition("/")
            order = self.orders.get(order_id)
            if order is None:
                return 404, {"name": "RESOURCE_NOT_FOUND", "details": [{"issue": "INVALID_RESOURCE_ID"}]}, 0
            if request.method == "GET" and not action:
                return 200, order, 0
            if request.method == "PATCH" and not action:
                return self._patch(order, request.json)
            if request.method == "POST" and action == "capture":
                return self._idempotent(request, lambda r: self._capture(order, r))
        return 404, {"name": "RESOURCE_NOT_FOUND", "message": "no such path"}, 0

    def _token(self, request):
        import base64

        expected = "Basic " + base64.b64encode(":".join(PAYPAL_CLIENT).encode()).decode()
        if request.headers.get("authorization") != expected or request.form.get("grant_type") != "client_credentials":
            return 401, {"error": "invalid_client", "error_description": "Client Authentication failed"}, 0
        token = f"A21AA{next(self.ids):08d}"
        self.tokens.add(token)
        return (
            200,
            {
                "scope": "https://uri.paypal.com/services/payments/payment",
                "access_token": token,
                "token_type": "Bearer",
                "app_id": "APP-LOCAL",
                "expires_in": self.token_lifetime,
            },
            0,
        )

    def _idempotent(self, request, handler):
        rid = request.headers.get("paypal-request-id")
        with self.lock:
            if rid and rid in self.request_ids:
                status, body = self.request_ids[rid]
                if isinstance(body, dict) and body.get("id") in self.orders:
                    # "PayPal returns the latest status of the previous request".
                    return (200 if status in (200, 201) else status), self.orders[body["id"]], 0
                return status, body, 0
            status, body, delay, wire = handler(request)
            if rid:
                self.request_ids[rid] = (status, body)
        return status, wire if wire is not None else body, delay

    def _create(self, request):
        payload = request.json
        order = {
            "id": f"5O{next(self.ids):015d}",
            "intent": payload["intent"],
            "status": "CREATED",
            "purchase_units": payload["purchase_units"],
        }
        self.orders[order["id"]] = order
        return 201, order, 0, None

    def _patch(self, order, operations):
        if order["status"] != "CREATED":
            return 422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "ORDER_ALREADY_COMPLETED"}]}, 0
        unit = order["purchase_units"][0]
        for operation in operations:
            field_name = operation["path"].rsplit("/", 1)[1]
            unit[field_name] = operation["value"]
        return 204, b"", 0

    def payer_acts(self, order_id: str) -> str:
        """The payer completes PayPal's payer action on an order that asked for it; the return URL
        PayPal sends them to (``?token=<order id>&PayerID=…``)."""
        with self.lock:
            order = self.orders[order_id]
            assert order["status"] == "PAYER_ACTION_REQUIRED"
            order["status"] = "APPROVED"
            return f"{order['experience_context']['return_url']}?token={order_id}&PayerID=PAYERLOCAL"

    def _capture_approved(self, order):
        """The capture of an order the payer approved: no payment source, the one it was set up with."""
        unit = order["purchase_units"][0]
        capture = {"id": f"3C{next(self.ids):015d}", "amount": unit["amount"], "status": "COMPLETED",
                   "custom_id": unit.get("custom_id"), "invoice_id": unit.get("invoice_id"),
                   "supplementary_data": {"related_ids": {"order_id": order["id"]}}}  # fmt: skip
        self.captures.append((order["id"], order["payment_source"]))
        order["status"] = "COMPLETED"
        unit["payments"] = {"captures": [capture]}
        return 201, order, 0, None

    def _capture(self, order, request):
        if order["status"] == "COMPLETED":
            return 422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "ORDER_ALREADY_CAPTURED"}]}, 0, None
        if order["status"] == "APPROVED" and not request.json.get("payment_source"):
            return self._capture_approved(order)
        source = request.json["payment_source"]
        kind = next(iter(source))
        vault_id = source[kind]["vault_id"]
        unit = order["purchase_units"][0]
        if vault_id == "declined":
            return (
                422,
                {
                    "name": "UNPROCESSABLE_ENTITY",
                    "message": "The requested action could not be performed.",
                    "details": [
                        {
                            "issue": "INSTRUMENT_DECLINED",
                            "description": "The instrument presented was either declined by the processor or bank.",
                        }
                    ],
                },
                0,
                None,
            )
        if vault_id == "auth":
            # The payer must act: the order keeps its payer-action link, and the return URL of the
            # payment source's experience context, where PayPal sends the payer back.
            order["status"] = "PAYER_ACTION_REQUIRED"
            order["payment_source"] = {kind: {"vault_id": vault_id}}
            order["experience_context"] = source[kind].get("experience_context") or {}
            order["links"] = [
                {"rel": "self", "href": f"{self.url}/v2/checkout/orders/{order['id']}", "method": "GET"},
                {"rel": "payer-action", "href": f"https://www.paypal.com/checkoutnow?token={order['id']}",
                 "method": "GET"},
            ]  # fmt: skip
            return (
                422,
                {
                    "name": "UNPROCESSABLE_ENTITY",
                    "details": [
                        {
                            "issue": "PAYER_ACTION_REQUIRED",
                            "description": "Payer needs to perform the following action before proceeding with payment.",
                        }
                    ],
                },
                0,
                None,
            )
        invoice = unit.get("invoice_id")
        if invoice and any(
            oid != order["id"] and other["purchase_units"][0].get("invoice_id") == invoice
            for oid, other in self.orders.items()
            if self.money_moved(oid)
        ):
            return (
                422,
                {
                    "name": "UNPROCESSABLE_ENTITY",
                    "details": [{"issue": "DUPLICATE_INVOICE_ID", "description": "Duplicate Invoice ID detected."}],
                },
                0,
                None,
            )
        capture = {"id": f"3C{next(self.ids):015d}", "amount": unit["amount"], "status": "COMPLETED"}
        if vault_id in ("insufficient", "expired"):
            capture["status"] = "DECLINED"
            capture["processor_response"] = {"response_code": "5120" if vault_id == "insufficient" else "5400"}
        else:
            self.captures.append((order["id"], source))
        order["status"] = "COMPLETED"
        order["payment_source"] = {kind: {"vault_id": vault_id}}
        unit["payments"] = {"captures": [capture]}
        if vault_id == "error500":
            return 500, {"name": "INTERNAL_SERVER_ERROR", "message": "An internal server error occurred."}, 0, None
        if vault_id == "slow":
            return 201, order, SLOW_SECONDS, None
        if vault_id == "badjson":
            return 201, order, 0, b"<html>502 Bad Gateway</html>"
        return 201, order, 0, None
