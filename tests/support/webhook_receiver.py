"""A platform's webhook endpoint on loopback that checks every signature with the
``standardwebhooks`` library, as the PEC platform would.

``WebhookReceiver`` runs ``http.server.ThreadingHTTPServer`` on 127.0.0.1 with a random port in
a daemon thread.  Each POST is recorded with its headers, its body, whether its signature
verified (``Webhook(secret).verify``, which also refuses a timestamp more than five minutes
from the receiver's clock) and the status answered.  ``answers`` scripts the statuses: a list
consumed one per request (then 200), or a function of the request.  A request whose signature
does not verify is answered 401, as a platform would.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.payload["type"]

    @property
    def data(self) -> dict:
        return self.payload["data"]


class WebhookReceiver:
    def __init__(self, secret: str | None = None):
        self.secret = secret or new_secret()
        self.deliveries: list[Delivery] = []
        self.answers: list[int] | Callable[[dict], int] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                super().setup()
                # The headers and the body go out in two writes: without this, each answer
                # waited for the client's delayed ACK (40 ms), as no real server makes it wait.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {key.lower(): value for key, value in self.headers.items()}
                status = owner._answer(headers, body)
                raw = b'{"ok":true}' if status < 300 else b'{"error":"refused"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        with self._lock:
            if not verified:
                status = 401
            elif callable(self.answers):
                status = self.answers(json.loads(body))
            else:
                status = self.answers.pop(0) if self.answers else 200
            self.deliveries.append(Delivery(headers, body, verified, status))
        return status

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/hooks/pec"

    @property
    def accepted(self) -> list[Delivery]:
        """The deliveries answered with a 2xx, in the order they came."""
        return [delivery for delivery in self.deliveries if 200 <= delivery.status < 300]

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
