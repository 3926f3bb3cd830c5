"""The adapters' refunds over HTTP, against the local Stripe and PayPal servers."""

from __future__ import annotations

from tests.support.gateway_servers import PAYPAL_CLIENT
from worker.gateways.paypal import PayPalGateway
from worker.gateways.refunds import RefundOutcome
from worker.gateways.stripe_gateway import StripeGateway


def test_a_stripe_refund_is_asked_once_per_key(stripe_server):
    stripe_server.paid("pi_refund1", 3050)
    gateway = StripeGateway(api_key="sk_test_local", api_base=stripe_server.url, read_timeout=0.5)
    ask = dict(reference="pi_refund1", amount_cents=3050, currency="EUR", kind="automatic", reason="double")
    try:
        first = gateway.refund(idempotency_key="refund:stripe:pi_refund1:automatic:1", **ask)
        again = gateway.refund(idempotency_key="refund:stripe:pi_refund1:automatic:1", **ask)
        other = gateway.refund(idempotency_key="refund:stripe:pi_refund1:automatic:2", **ask)
    finally:
        gateway.close()
    assert first.outcome is RefundOutcome.SUCCEEDED and first.reference.startswith("re_")
    assert again == first  # Stripe replays the first answer for the key
    assert stripe_server.refunded_amount("pi_refund1") == 3050
    assert other.outcome is RefundOutcome.FAILED and "charge_already_refunded" in other.message
    (request, *_) = stripe_server.sent("POST", "/v1/refunds")
    assert request.form["reason"] == "duplicate" and request.form["payment_intent"] == "pi_refund1"


def test_a_lost_stripe_answer_is_unknown(stripe_server):
    gateway = StripeGateway(api_key="sk_test_local", api_base=stripe_server.url, read_timeout=0.5)
    stripe_server.stop()
    try:
        result = gateway.refund(
            reference="pi_x", amount_cents=1, currency="EUR", idempotency_key="k", kind="requested", reason="r"
        )
    finally:
        gateway.close()
    assert result.outcome is RefundOutcome.UNKNOWN


def test_a_paypal_refund_takes_a_capture_or_its_order(paypal_server):
    paypal_server.captured("3CAPTURE1", 3050, order_number="PEC-2027-000001")
    gateway = PayPalGateway(
        client_id=PAYPAL_CLIENT[0], client_secret=PAYPAL_CLIENT[1], api_base=paypal_server.url, read_timeout=0.5
    )
    try:
        by_order = gateway.refund(
            reference="capture-3CAPTURE1", amount_cents=1000, currency="EUR", idempotency_key="refund:a",
            kind="automatic", reason="double",
        )  # fmt: skip
        by_capture = gateway.refund(
            reference="3CAPTURE1", amount_cents=2050, currency="EUR", idempotency_key="refund:b",
            kind="requested", reason="asked",
        )  # fmt: skip
        replay = gateway.refund(
            reference="3CAPTURE1", amount_cents=2050, currency="EUR", idempotency_key="refund:b",
            kind="requested", reason="asked",
        )  # fmt: skip
        too_much = gateway.refund(
            reference="3CAPTURE1", amount_cents=1, currency="EUR", idempotency_key="refund:c",
            kind="requested", reason="asked",
        )  # fmt: skip
    finally:
        gateway.close()
    assert by_order.outcome is by_capture.outcome is RefundOutcome.SUCCEEDED
    assert replay.reference == by_capture.reference  # PayPal-Request-Id replays
    assert too_much.outcome is RefundOutcome.FAILED and "CAPTURE_FULLY_REFUNDED" in too_much.message
    assert sorted(r["cents"] for r in paypal_server.refunds.values()) == [1000, 2050]
    (first, *_) = paypal_server.sent("POST", "/v2/payments/captures/3CAPTURE1/refund")
    assert first.headers["paypal-request-id"] == "refund:a"
    assert first.json == {"amount": {"currency_code": "EUR", "value": "10.00"}, "note_to_payer": "double"}
