"""POST /webhooks/stripe: events signed as Stripe signs them, against the local Stripe server."""

from __future__ import annotations

import logging
import time
from datetime import date

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.gateway_webhooks import (
    STRIPE_WEBHOOK_SECRET,
    checkout_session,
    stripe_event,
    stripe_signature,
)
from tests.support.link_handler import Clock, close_runtime, row_counts, runtime_on_test_database
from tests.support.orders import complete_order
from tests.support.settings import make_settings
from worker.metrics import database_registry
from worker.services.payments import register_payment
from worker.store.models import GatewayEvent, GatewayRefund, Mailbox, OutboxMessage, Payment, RenewalOrder
from worker.web import create_app

EXPIRY = date(2027, 3, 20)


@pytest.fixture
def clock() -> Clock:
    return Clock(date(2027, 3, 1))


@pytest.fixture
def settings(tmp_path, database_url, stripe_server):
    return make_settings(
        tmp_path,
        database_url=database_url,
        payment_gateway="stripe",
        stripe_api_key="sk_test_local",
        stripe_api_base=stripe_server.url,
        stripe_webhook_secret=STRIPE_WEBHOOK_SECRET,
    )


@pytest.fixture
def order(session_factory, settings):
    """A confirmed card order: (order number, total in cents, mailbox id)."""
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        placed = complete_order(session, settings, mailbox, method="card")
        session.commit()
        return placed.order_number, placed.total_cents, mailbox.id


def post(client, payload: bytes, signature: str | None = None, **headers):
    if signature is None:
        signature = stripe_signature(payload)
    return client.post(
        "/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": signature, **headers},
        content_type="application/json",
    )


def paid_event(number, total, pi="pi_hosted0001", **extra):
    return stripe_event("checkout.session.completed", checkout_session(number, total, payment_intent=pi), **extra)


def outcomes(session_factory) -> list[tuple[str, str]]:
    with session_factory() as session:
        return [
            (row.event_type, row.outcome) for row in session.scalars(select(GatewayEvent).order_by(GatewayEvent.id))
        ]


def test_a_payment_seen_only_by_the_webhook_is_registered_from_the_payload(
    client, session_factory, order, stripe_server
):
    """The holder paid on Stripe's page and closed the browser: the event alone renews the mailbox."""
    number, total, mailbox_id = order
    response = post(client, paid_event(number, total))

    assert response.status_code == 200 and response.json == {"outcome": "registered"}
    assert stripe_server.requests == []  # no call back to Stripe
    with session_factory() as session:
        (payment,) = session.scalars(select(Payment)).all()
        assert (payment.reference, payment.amount_cents, payment.method) == ("stripe:pi_hosted0001", total, "card")
        assert session.scalar(select(RenewalOrder.status)) == "paid"
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 20)
        assert session.scalar(select(OutboxMessage.kind).where(OutboxMessage.kind == "renewal-completed"))
    assert outcomes(session_factory) == [("checkout.session.completed", "registered")]


def test_a_replay_answers_200_and_changes_nothing(client, session_factory, order):
    number, total, _ = order
    payload = paid_event(number, total, event_id="evt_replayed")
    assert post(client, payload).status_code == 200
    before = row_counts(session_factory)

    again = post(client, payload)

    assert again.status_code == 200 and again.json == {"outcome": "replay"}
    assert row_counts(session_factory) == before
    assert outcomes(session_factory) == [("checkout.session.completed", "registered")]


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda payload: stripe_signature(payload, "whsec_anothersecret0123456789"), id="other-secret"),
        pytest.param(lambda payload: stripe_signature(payload + b" "), id="other-payload"),
        pytest.param(lambda payload: stripe_signature(payload, at=int(time.time()) - 301), id="older-than-tolerance"),
        pytest.param(lambda payload: "t=1,v1=00", id="garbage"),
        pytest.param(lambda payload: "", id="missing"),
    ],
)
def test_a_bad_signature_answers_400_and_changes_nothing(client, session_factory, order, signature):
    number, total, _ = order
    payload = paid_event(number, total)
    before = row_counts(session_factory)

    response = post(client, payload, signature(payload))

    assert response.status_code == 400
    assert row_counts(session_factory) == before


def test_a_verified_event_of_another_type_answers_200_and_changes_nothing(client, session_factory, order):
    before = row_counts(session_factory)
    response = post(client, stripe_event("customer.created", {"id": "cus_1", "object": "customer"}))
    assert response.status_code == 200 and response.json == {"outcome": "ignored"}
    assert row_counts(session_factory) == before


def test_an_amount_mismatch_is_recorded_alerted_and_not_registered(client, session_factory, order, caplog):
    number, total, mailbox_id = order
    payload = stripe_event(
        "checkout.session.completed", checkout_session(number, total - 100, payment_intent="pi_short")
    )
    with caplog.at_level(logging.INFO, logger="worker"):
        response = post(client, payload)

    assert response.status_code == 200
    assert outcomes(session_factory) == [("checkout.session.completed", "amount_mismatch")]
    with session_factory() as session:
        assert session.scalars(select(Payment)).all() == []
        assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"
        assert session.get(Mailbox, mailbox_id).expires_on == EXPIRY
    (line,) = [record for record in caplog.records if "amount_mismatch" in record.getMessage()]
    assert line.levelno == logging.WARNING and "checkout.session.completed" in line.getMessage()
    assert STRIPE_WEBHOOK_SECRET not in caplog.text and "v1=" not in caplog.text


def test_another_currency_is_a_mismatch(client, session_factory, order):
    number, total, _ = order
    item = checkout_session(number, total, payment_intent="pi_usd", currency="usd")
    assert post(client, stripe_event("checkout.session.completed", item)).json == {"outcome": "amount_mismatch"}


def test_events_out_of_order_register_once(client, session_factory, order):
    """The asynchronous success first, then the session's completion (unpaid), then a stale failure."""
    number, total, mailbox_id = order
    succeeded = stripe_event(
        "checkout.session.async_payment_succeeded", checkout_session(number, total, payment_intent="pi_async")
    )
    completed = stripe_event(
        "checkout.session.completed", checkout_session(number, total, payment_intent="pi_async", paid=False)
    )
    failed = stripe_event(
        "payment_intent.payment_failed",
        {"id": "pi_async", "object": "payment_intent", "amount": total, "currency": "eur",
         "metadata": {"order_number": number}, "last_payment_error": {"code": "card_declined"}},
    )  # fmt: skip
    assert post(client, succeeded).json == {"outcome": "registered"}
    assert post(client, completed).json == {"outcome": "payment_pending"}
    assert post(client, failed).json == {"outcome": "payment_failed"}
    assert post(client, succeeded).json == {"outcome": "replay"}
    with session_factory() as session:
        assert len(session.scalars(select(Payment)).all()) == 1
        assert session.scalar(select(RenewalOrder.status)) == "paid"
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 20)


def test_a_refund_that_arrives_before_its_payment_keeps_the_payment_unregistered(client, session_factory, order):
    number, total, mailbox_id = order
    refunded = stripe_event(
        "charge.refunded",
        {"id": "ch_early", "object": "charge", "payment_intent": "pi_early", "amount": total,
         "amount_refunded": total, "refunded": True, "currency": "eur", "metadata": {}},
    )  # fmt: skip
    assert post(client, refunded).json == {"outcome": "refunded"}
    assert post(client, paid_event(number, total, pi="pi_early")).json == {"outcome": "refunded_first"}
    with session_factory() as session:
        assert session.scalars(select(Payment)).all() == []
        assert session.get(Mailbox, mailbox_id).expires_on == EXPIRY


def test_a_double_payment_is_refunded_automatically_once(
    client, runtime, session_factory, settings, order, stripe_server
):
    """Paid by bank transfer, then on Stripe's page: the card payment goes back, the holder is told."""
    number, total, mailbox_id = order
    with session_factory() as session:
        register_payment(
            session, order_number=number, amount_cents=total, method="bank_transfer", reference="CRO-0001",
            now=Clock(date(2027, 3, 1)).now, today=date(2027, 3, 1), settings=settings,
        )  # fmt: skip
        session.commit()
    stripe_server.paid("pi_double", total, order_number=number)
    payload = paid_event(number, total, pi="pi_double")

    assert post(client, payload).json == {"outcome": "refund_due"}
    assert post(client, payload).json == {"outcome": "replay"}

    (refund,) = stripe_server.refunds.values()
    assert (refund["payment_intent"], refund["amount"], refund["reason"]) == ("pi_double", total, "duplicate")
    (request,) = stripe_server.sent("POST", "/v1/refunds")
    with session_factory() as session:
        (row,) = session.scalars(select(GatewayRefund)).all()
        assert request.headers["idempotency-key"] == row.idempotency_key
        assert (row.status, row.kind, row.amount_cents, row.refund_reference) == (
            "succeeded", "automatic", total, refund["id"],
        )  # fmt: skip
        assert [p.reference for p in session.scalars(select(Payment))] == ["CRO-0001"]
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 20)  # renewed once
        (told,) = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "payment-refunded")).all()
        email = runtime.renderer.render(
            kind=told.kind, stage=told.stage, language=told.language, to_address=told.to_address,
            message_id=told.message_id, context=told.context, now=Clock(date(2027, 3, 1)).now,
        )  # fmt: skip
    assert email.subject == f"Rimborso di {total / 100:.2f} € per l'ordine {number}".replace(".", ",")
    assert "risultava già pagato" in email.text and "carta di credito" in email.text
    assert "Il rinnovo già registrato resta valido" in email.text

    # Stripe then tells us the refund went through: recorded, nothing else.
    refunded = stripe_event(
        "charge.refunded",
        {"id": "ch_double", "object": "charge", "payment_intent": "pi_double", "amount": total,
         "amount_refunded": total, "refunded": True, "currency": "eur", "metadata": {}},
    )  # fmt: skip
    assert post(client, refunded).json == {"outcome": "refunded"}
    assert len(stripe_server.refunds) == 1


def test_a_dispute_is_recorded_and_alerted_and_leaves_the_mailbox_alone(client, session_factory, order, caplog):
    number, total, mailbox_id = order
    assert post(client, paid_event(number, total, pi="pi_disputed")).json == {"outcome": "registered"}
    dispute = stripe_event(
        "charge.dispute.created",
        {"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": "pi_disputed", "amount": total,
         "currency": "eur", "reason": "fraudulent", "status": "needs_response", "metadata": {}},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert post(client, dispute).json == {"outcome": "dispute"}
    assert "dispute" in caplog.text and "charge.dispute.created" in caplog.text
    with session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert (mailbox.expires_on, mailbox.plan) == (date(2028, 3, 20), "pro")
        assert session.scalar(select(RenewalOrder.status)) == "paid"


def test_the_route_is_exempt_from_csrf_only(client, order, session_factory):
    """No form token is needed, but a browser posting from another site is still refused."""
    number, total, _ = order
    payload = paid_event(number, total)
    refused = post(client, payload, Origin="https://evil.example")
    assert refused.status_code in (400, 403)
    assert post(client, payload).status_code == 200
    assert client.post("/ordine/abcdefgh12/conferma").status_code == 400  # every other POST keeps its token


def test_without_a_secret_the_route_does_not_exist(tmp_path, database_url, session_factory, clock):
    settings = make_settings(tmp_path, database_url=database_url, payment_gateway="stripe", stripe_api_key="sk_x")
    runtime = runtime_on_test_database(settings, session_factory, clock)
    try:
        assert create_app(runtime).test_client().post("/webhooks/stripe", data=b"{}").status_code == 404
    finally:
        close_runtime(runtime)


def test_mismatches_refunds_and_disputes_are_counted_for_prometheus(
    client, runtime, session_factory, settings, order, stripe_server
):
    number, total, _ = order
    post(client, stripe_event("checkout.session.completed", checkout_session(number, 1, payment_intent="pi_one")))
    assert post(client, paid_event(number, total, pi="pi_good")).json == {"outcome": "registered"}
    stripe_server.paid("pi_second", total, order_number=number)
    assert post(client, paid_event(number, total, pi="pi_second")).json == {"outcome": "refund_due"}
    dispute = {"id": "dp_2", "object": "dispute", "payment_intent": "pi_good", "amount": total, "currency": "eur"}
    post(client, stripe_event("charge.dispute.created", dispute))

    scraped = generate_latest(database_registry(runtime.engine, settings, runtime.clock)).decode()

    for line in (
        'pec_renewal_gateway_events_total{gateway="stripe",outcome="amount_mismatch"} 1.0',
        'pec_renewal_gateway_events_total{gateway="stripe",outcome="registered"} 1.0',
        'pec_renewal_gateway_events_total{gateway="stripe",outcome="refund_due"} 1.0',
        'pec_renewal_gateway_events_total{gateway="stripe",outcome="dispute"} 1.0',
        'pec_renewal_gateway_refunds_total{kind="automatic",status="succeeded"} 1.0',
    ):
        assert line in scraped


def test_a_payment_for_a_mailbox_renewed_meanwhile_is_refunded(client, session_factory, order, stripe_server):
    number, total, mailbox_id = order
    with session_factory() as session:  # renewed another way (another order, an import) since this order
        session.get(Mailbox, mailbox_id).expires_on = date(2028, 3, 20)
        session.commit()
    stripe_server.paid("pi_late", total, order_number=number)

    assert post(client, paid_event(number, total, pi="pi_late")).json == {"outcome": "refund_due"}

    assert stripe_server.refunded_amount("pi_late") == total
    with session_factory() as session:
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 3, 20)  # not moved twice
        assert session.scalars(select(Payment)).all() == []
        (event,) = session.scalars(select(GatewayEvent)).all()
        assert event.detail == "mailbox_changed: refunded automatically"
