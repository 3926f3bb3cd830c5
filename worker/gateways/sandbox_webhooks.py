"""The sandbox gateway's webhooks: what it tells our own ``POST /webhooks/sandbox``, as Stripe would.

When the sandbox records a charge (a checkout's payment, an off-session auto-renew charge) or a
refund, it writes the event in the same transaction as its record, into ``sandbox_webhooks``;
the platform events' sender (:class:`worker.events.delivery.EventSender`, pointed at this table)
posts it to ``SANDBOX_WEBHOOK_URL`` afterwards, signed by the Standard Webhooks specification
with ``SANDBOX_WEBHOOK_SECRET``, at least once, the events of one charge in order.  Nothing is
posted inside the call that charged: the holder's request never waits on our own endpoint.

Types and ``data``:

- ``charge.succeeded``, ``charge.failed``: ``charge`` (the sandbox's id, ``sbx_ch_…``),
  ``idempotency_key`` (what a checkout's payment is registered under), ``amount_cents``,
  ``currency``, ``outcome``, ``decline_code``, ``description`` (a checkout's names its order);
- ``refund.succeeded``: ``refund`` (``sbx_re_…``), ``charge``, ``payment`` (the reference the
  refund was asked for, as our ``gateway_refunds`` row names it), ``amount_cents``, ``currency``.

The ``webhook-id`` is derived from the record's idempotency key: the same record is one event.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker.gateways.refunds import WebhookRefused
from worker.store.db import dialect_insert
from worker.store.models import SandboxWebhook

CHARGE_SUCCEEDED = "charge.succeeded"
CHARGE_FAILED = "charge.failed"
REFUND_SUCCEEDED = "refund.succeeded"
TYPES = (CHARGE_SUCCEEDED, CHARGE_FAILED, REFUND_SUCCEEDED)

TABLE = SandboxWebhook.__table__
#: The column the sender keeps each stream's events in order by: the sandbox's charge row.
STREAM = "stream_id"


def webhook_id(event_type: str, idempotency_key: str) -> str:
    return "msg_sbx_" + hashlib.sha256(f"{event_type}|{idempotency_key}".encode()).hexdigest()[:32]


def write_event(
    connection: Connection, event_type: str, *, key: str, stream_id: int, data: dict[str, Any], now: datetime
) -> None:
    """The event of the record just written under ``key``, in the caller's transaction (written once)."""
    connection.execute(
        dialect_insert(connection, TABLE).on_conflict_do_nothing(),
        {
            "webhook_id": webhook_id(event_type, key),
            "type": event_type,
            "stream_id": stream_id,
            "data": data,
            "occurred_at": now,
            "status": "pending",
            "attempts": 0,
        },
    )


def verify(body: bytes, headers: dict[str, str], secret: str) -> tuple[str, dict[str, Any]]:
    """A posted event, verified by its Standard Webhooks signature (and the timestamp's 5 minutes of
    tolerance): its ``webhook-id`` and body.  Raises :class:`WebhookRefused` for anything else."""
    try:
        payload = Webhook(secret).verify(body, headers)
    except WebhookVerificationError as error:
        raise WebhookRefused(f"signature: {error}") from None
    except ValueError:
        raise WebhookRefused("the body is not JSON") from None
    if not (
        isinstance(payload, dict) and isinstance(payload.get("type"), str) and isinstance(payload.get("data"), dict)
    ):
        raise WebhookRefused("the body is not a sandbox event")
    return headers["webhook-id"], payload
