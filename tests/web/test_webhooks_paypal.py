"""POST /webhooks/paypal: events verified by the local PayPal's verify-webhook-signature call."""

from __future__ import annotations

import json
import logging
from datetime import date

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.gateway_servers import PAYPAL_CLIENT
from tests.support.gateway_webhooks import PAYPAL_WEBHOOK_ID, PayPalServer, paypal_event
from tests.support.link_handler import Clock, row_counts
from tests.support.orders import complete_order
from tests.support.settings import make_settings
from worker.services.payments import register_payment
from worker.store.models import GatewayEvent, GatewayRefund, Mailbox, OutboxMessage, Payment, RenewalOrder

EXPIRY = date(2027, 3, 20)


@pytest.fixture
def paypal_server():
    server = PayPalServer().start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock(date(2027, 3, 1))


@pytest.fixture
def settings(tmp_path, database_url, paypal_server):
    return make_settings(
        tmp_path,
        database_url=database_url,
        payment_gateway="paypal",
        paypal_client_id=PAYPAL_CLIENT[0],
        paypal_client_secret=PAYPAL_CLIENT[1],
        paypal_api_base=paypal_server.url,
        paypal_webhook_id=PAYPAL_WEBHOOK_ID,
    )


@pytest.fixture
def order(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        placed = complete_order(session, settings, mailbox, method="paypal")
        session.commit()
        return placed.order_number, placed.total_cents, mailbox.id


def post(client, server, event: dict, headers: dict | None = None):
    return client.post(
        "/webhooks/paypal",
        data=json.dumps(event),
        headers=server.signed_headers(event) if headers is None else headers,
        content_type="application/json",
    )


def completed(server, number, total, capture_id="3C000000000000001", **extra):
    return paypal_event("PAYMENT.CAPTURE.COMPLETED", server.captured(capture_id, total, order_number=number), **extra)


def test_a_capture_seen_only_by_the_webhook_is_registered(client, session_factory, order, paypal_server):
    number, total, mailbox_id = order
    event = completed(paypal_server, number, total)
    response = post(client, paypal_server, event)

    assert response.status_code == 200 and response.json == {"outcome": "registered"}
    (verification,) = paypal_server.sent("POST", "/v1/notifications/verify-webhook-signature")
    assert verification.json["webhook_id"] == PAYPAL_WEBHOOK_ID
    assert verification.json["transmission_id"] == "69cd13f0-d67a-11e5-baa3-778b53f4ae55"
    assert verification.json["webhook_event"]["event_type"] == "PAYMENT.CAPTURE.COMPLETED"
    assert json.dumps(event).encode() in verification.body  # the event sent back as PayPal posted it
    with session_factory() as session:
        (payment,) = session.scalars(select(Payment)).all()
        assert (payment.reference, payment.method, payment.amount_cents) == (
            "paypal:3C000000000000001",
            "paypal",
            total,
        )
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 20)


def test_a_replay_changes_nothing(client, session_factory, order, paypal_server):
    number, total, _ = order
    event = completed(paypal_server, number, total)
    assert post(client, paypal_server, event).status_code == 200
    before = row_counts(session_factory)
    again = post(client, paypal_server, event)
    assert again.status_code == 200 and again.json == {"outcome": "replay"}
    assert row_counts(session_factory) == before


def test_a_bad_signature_answers_400_and_changes_nothing(client, session_factory, order, paypal_server):
    number, total, _ = order
    event = completed(paypal_server, number, total)
    headers = paypal_server.signed_headers(event)
    tampered = json.loads(json.dumps(event))
    tampered["resource"]["amount"]["value"] = "0.01"
    before = row_counts(session_factory)

    assert post(client, paypal_server, tampered, headers).status_code == 400
    assert post(client, paypal_server, event, {**headers, "PAYPAL-TRANSMISSION-SIG": "forged"}).status_code == 400
    assert post(client, paypal_server, event, {}).status_code == 400  # no PAYPAL-* headers: PayPal not even asked
    assert client.post("/webhooks/paypal", data=b"not json", content_type="application/json").status_code == 400
    assert row_counts(session_factory) == before


def test_paypal_unreachable_answers_503_so_that_it_sends_again(client, session_factory, order, paypal_server):
    number, total, _ = order
    event = completed(paypal_server, number, total)
    headers = paypal_server.signed_headers(event)
    paypal_server.stop()
    before = row_counts(session_factory)
    assert post(client, paypal_server, event, headers).status_code == 503
    assert row_counts(session_factory) == before


def test_denied_refunded_and_other_events(client, session_factory, order, paypal_server, caplog):
    number, total, mailbox_id = order
    denied = paypal_event(
        "PAYMENT.CAPTURE.DENIED",
        {"id": "3CDENIED", "status": "DECLINED", "custom_id": number,
         "amount": {"currency_code": "EUR", "value": "30.50"}},
    )  # fmt: skip
    assert post(client, paypal_server, denied).json == {"outcome": "payment_failed"}
    before = row_counts(session_factory)
    other = paypal_event("CHECKOUT.ORDER.APPROVED", {"id": "5O1", "status": "APPROVED"})
    assert post(client, paypal_server, other).json == {"outcome": "ignored"}
    assert row_counts(session_factory) == before
    dispute = paypal_event(
        "CUSTOMER.DISPUTE.CREATED",
        {"dispute_id": "PP-D-1", "reason": "MERCHANDISE_OR_SERVICE_NOT_RECEIVED", "status": "OPEN",
         "dispute_amount": {"currency_code": "EUR", "value": "30.50"},
         "disputed_transactions": [{"seller_transaction_id": "3CDENIED"}]},
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="worker"):
        assert post(client, paypal_server, dispute).json == {"outcome": "dispute"}
    assert "CUSTOMER.DISPUTE.CREATED" in caplog.text and dispute["id"] in caplog.text
    assert "transmission" not in caplog.text.lower()
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"
        assert session.get(Mailbox, mailbox_id).expires_on == EXPIRY
        assert session.scalars(select(GatewayEvent.outcome).order_by(GatewayEvent.id)).all() == [
            "payment_failed",
            "dispute",
        ]


def test_a_double_payment_is_refunded_through_the_capture(client, session_factory, settings, order, paypal_server):
    number, total, mailbox_id = order
    with session_factory() as session:
        register_payment(
            session, order_number=number, amount_cents=total, method="postal_slip", reference="VCY-77",
            now=Clock(date(2027, 3, 1)).now, today=date(2027, 3, 1), settings=settings,
        )  # fmt: skip
        session.commit()
    event = completed(paypal_server, number, total, capture_id="3CDOUBLE")

    assert post(client, paypal_server, event).json == {"outcome": "refund_due"}
    assert post(client, paypal_server, event).json == {"outcome": "replay"}

    (refund,) = paypal_server.refunds.values()
    assert refund == {"capture": "3CDOUBLE", "cents": total}
    (request,) = paypal_server.sent("POST", "/v2/payments/captures/3CDOUBLE/refund")
    with session_factory() as session:
        (row,) = session.scalars(select(GatewayRefund)).all()
        assert request.headers["paypal-request-id"] == row.idempotency_key
        assert (row.gateway, row.status, row.kind) == ("paypal", "succeeded", "automatic")
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 20)
        assert session.scalars(select(OutboxMessage.kind).where(OutboxMessage.kind == "payment-refunded")).all() == [
            "payment-refunded"
        ]
