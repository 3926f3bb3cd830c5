"""PayPal's REST API as :class:`~worker.gateways.paypal.PayPalGateway` speaks it: the OAuth
client-credentials token (renewed a minute early, and once on a 401), a request with its
``PayPal-Request-Id``, and what an answer means before the gateway reads it: ``Lost`` (no
usable answer: a timeout, a connection error, 5xx, 408, 409, 429, unreadable JSON: the outcome
is unknown) or ``Refused`` (a 4xx, with PayPal's issue and description).

One pooled, thread-safe httpx client per gateway, with bounded timeouts.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from worker.gateways.base import GatewayError

#: The ``reference_id`` of the one purchase unit of every order we create.
REFERENCE_ID = "default"


class Lost(Exception):
    """The answer was lost or unreadable: the outcome is unknown."""


class Refused(Exception):
    """PayPal refused the request (a 4xx): its status, PayPal's issue and description."""

    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body
        details = body.get("details") or [{}]
        self.issue = (details[0] or {}).get("issue") or body.get("name") or f"HTTP_{status}"
        self.description = (details[0] or {}).get("description") or body.get("message") or ""
        super().__init__(f"{status} {self.issue}")


class PayPalClient:
    """The HTTP side of the PayPal gateway: its credentials, its connection pool and its token."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        api_base: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
    ):
        self._auth = (client_id, client_secret)
        self._http = httpx.Client(
            base_url=api_base.rstrip("/"),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            headers={"Accept": "application/json"},
        )
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _access_token(self, *, renew: bool = False) -> str:
        with self._token_lock:
            if renew or self._token is None or time.monotonic() >= self._token_expires:
                try:
                    response = self._http.post(
                        "/v1/oauth2/token", data={"grant_type": "client_credentials"}, auth=self._auth
                    )
                except httpx.HTTPError as error:
                    raise Lost(f"token: {type(error).__name__}") from None
                if response.status_code >= 500 or response.status_code == 429:
                    raise Lost(f"token: HTTP {response.status_code}")
                if response.status_code != 200:
                    raise GatewayError(f"PayPal refused the client credentials (HTTP {response.status_code})")
                body = read_json(response)
                self._token = body["access_token"]
                # Renew a minute early, so a token never expires in flight.
                self._token_expires = time.monotonic() + max(0, int(body.get("expires_in", 0)) - 60)
            return self._token

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        request_id_header: str | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._access_token(renew=attempt == 2)}"}
            if json is not None:
                headers["Prefer"] = "return=representation"
            if content is not None:
                headers["Content-Type"] = "application/json"
            if request_id_header:
                headers["PayPal-Request-Id"] = request_id_header
            try:
                response = self._http.request(method, path, json=json, content=content, headers=headers)
            except httpx.HTTPError as error:
                raise Lost(f"{type(error).__name__}") from None
            if response.status_code == 401 and attempt == 1:
                continue  # the token expired early: renew it once (the request id makes the retry safe)
            break
        if response.status_code >= 500 or response.status_code in (408, 409, 429):
            raise Lost(f"HTTP {response.status_code}")
        if response.status_code == 401:
            raise GatewayError("PayPal refused the access token twice")
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise Refused(response.status_code, body if isinstance(body, dict) else {})
        return response

    def _post(self, path: str, body: dict, rid: str) -> dict:
        return read_json(self._send("POST", path, json=body, request_id_header=rid))

    def _get_order(self, order_id: str) -> dict:
        return read_json(self._send("GET", f"/v2/checkout/orders/{order_id}"))

    def _patch(self, order_id: str, unit: dict) -> None:
        path = f"/purchase_units/@reference_id=='{REFERENCE_ID}'"
        operations = [
            {"op": "replace", "path": f"{path}/amount", "value": unit["amount"]},
            {"op": "replace", "path": f"{path}/custom_id", "value": unit["custom_id"]},
            {"op": "add", "path": f"{path}/invoice_id", "value": unit["invoice_id"]},
            {"op": "add", "path": f"{path}/description", "value": unit["description"]},
        ]
        self._send("PATCH", f"/v2/checkout/orders/{order_id}", json=operations)


def read_json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        raise Lost(f"unreadable answer (HTTP {response.status_code})") from None
    if not isinstance(body, dict):
        raise Lost(f"unexpected answer (HTTP {response.status_code})")
    return body
