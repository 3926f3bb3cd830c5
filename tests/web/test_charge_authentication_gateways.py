"""An auto-renew charge that asks for authentication, on Stripe and on PayPal (their local servers):
the holder is sent on session to authenticate that very payment, and the renewal completes once,
whichever of the return page and the webhook comes first."""

from __future__ import annotations

import json
from datetime import date

import pytest
from sqlalchemy import func, select

from tests.support.browser import links_in, maildir_messages
from tests.support.charges import CHARGE_DAY, EXPIRES, mark_charge_notice_sent
from tests.support.factories import make_mailbox
from tests.support.gateway_webhooks import (
    PAYPAL_WEBHOOK_ID,
    STRIPE_WEBHOOK_SECRET,
    paypal_event,
    stripe_event,
    stripe_signature,
)
from tests.support.link_handler import Clock, close_runtime, csrf_token, runtime_on_test_database
from tests.support.settings import make_settings
from worker.services.daily import run_day
from worker.store.models import ChargeIntent, Invoice, Mailbox, PlatformEvent
from worker.web import create_app

BASE_URL = "https://rinnovi.example.test"
RENEWED = date(2028, 3, 31)


@pytest.fixture
def clock() -> Clock:
    return Clock(CHARGE_DAY)


def _served(tmp_path, database_url, session_factory, clock, **settings):
    built = runtime_on_test_database(
        make_settings(tmp_path, database_url=database_url, **settings), session_factory, clock
    )
    return built, create_app(built).test_client()


def _charged(runtime, session_factory, token: str) -> tuple[int, str]:
    """A mailbox charged on its charge day with ``token``; the email's link to authenticate it (a path)."""
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method=token)
        mark_charge_notice_sent(session, mailbox)
        session.flush()
        mailbox_id = mailbox.id
    run_day(runtime, CHARGE_DAY)
    (asked,) = maildir_messages(runtime.settings.maildir)
    assert asked["X-PEC-Renewal-Kind"] == "charge-authentication-required"
    (link,) = links_in(asked, BASE_URL, "rinnovo-automatico/autenticazione")
    return mailbox_id, link.removeprefix(BASE_URL)


def _renewed_once(session_factory, mailbox_id: int) -> None:
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == RENEWED
        assert session.scalars(select(ChargeIntent.status)).all() == ["succeeded"]
        assert session.scalar(select(func.count()).select_from(Invoice)) == 1
        renewed = select(func.count()).select_from(PlatformEvent).where(PlatformEvent.type == "mailbox.renewed")
        assert session.scalar(renewed) == 1


@pytest.fixture
def on_stripe(tmp_path, database_url, session_factory, clock, stripe_server):
    runtime, client = _served(
        tmp_path,
        database_url,
        session_factory,
        clock,
        payment_gateway="stripe",
        stripe_api_key="sk_test_local",
        stripe_api_base=stripe_server.url,
        stripe_webhook_secret=STRIPE_WEBHOOK_SECRET,
    )
    yield runtime, client
    close_runtime(runtime)


@pytest.mark.parametrize("webhook_first", [True, False])
def test_stripe_confirms_on_session_and_renews_once(on_stripe, session_factory, stripe_server, webhook_first):
    runtime, client = on_stripe
    mailbox_id, link = _charged(runtime, session_factory, "cus_L0cal.pm_card_authenticationRequired")
    (intent_id,) = stripe_server.intents
    html = client.get(link).get_data(as_text=True)
    response = client.post(link, data={"csrf_token": csrf_token(html)})
    assert response.status_code == 303 and response.headers["Location"] == f"{stripe_server.url}/3ds/{intent_id}"
    (confirm,) = stripe_server.sent("POST", f"/v1/payment_intents/{intent_id}/confirm")
    assert confirm.form["return_url"] == f"http://localhost{link}/esito"
    back = stripe_server.authenticate(intent_id)
    succeeded = stripe_event("payment_intent.succeeded", stripe_server.intents[intent_id])
    webhook = {"data": succeeded, "headers": {"Stripe-Signature": stripe_signature(succeeded)}}
    if webhook_first:
        assert client.post("/webhooks/stripe", content_type="application/json", **webhook).status_code == 200
        _renewed_once(session_factory, mailbox_id)
    returned = client.get(back.removeprefix("http://localhost"))
    assert returned.status_code == 200  # a GET: shows the page, renews nothing by itself
    if not webhook_first:
        with session_factory() as session:
            assert session.scalars(select(ChargeIntent.status)).all() == ["requires_authentication"]
        assert "Completa il rinnovo" in returned.get_data(as_text=True)
    assert client.post(f"{link}/esito", data={"csrf_token": csrf_token(html)}).status_code == 303
    assert client.post("/webhooks/stripe", content_type="application/json", **webhook).status_code == 200
    _renewed_once(session_factory, mailbox_id)
    assert len(stripe_server.intents) == 1  # that very payment, never a second one
    assert "Rinnovo completato" in client.get(link).get_data(as_text=True)


@pytest.fixture
def on_paypal(tmp_path, database_url, session_factory, clock, paypal_server):
    runtime, client = _served(
        tmp_path,
        database_url,
        session_factory,
        clock,
        payment_gateway="paypal",
        paypal_client_id="client-local",
        paypal_client_secret="secret-local",
        paypal_api_base=paypal_server.url,
        paypal_webhook_id=PAYPAL_WEBHOOK_ID,
    )
    yield runtime, client
    close_runtime(runtime)


def test_paypal_sends_the_payer_to_act_then_captures_on_a_post(on_paypal, session_factory, paypal_server):
    runtime, client = on_paypal
    signer = runtime.signer
    mailbox_id, link = _charged(runtime, session_factory, "paypal.auth")
    (order_id,) = paypal_server.orders
    (capture,) = paypal_server.sent("POST", f"/v2/checkout/orders/{order_id}/capture")
    context = capture.json["payment_source"]["paypal"]["experience_context"]
    assert context["return_url"] == f"{BASE_URL}/rinnovo-automatico/autenticazione/paypal"
    html = client.get(link).get_data(as_text=True)
    response = client.post(link, data={"csrf_token": csrf_token(html)})
    assert response.headers["Location"] == f"https://www.paypal.com/checkoutnow?token={order_id}"
    back = paypal_server.payer_acts(order_id).removeprefix(BASE_URL)
    returned = client.get(back)
    assert returned.status_code == 303
    to = returned.headers["Location"].removesuffix("/esito").rsplit("/", 1)[1]
    assert signer.read_charge_authentication_token(to) == signer.read_charge_authentication_token(
        link.rsplit("/", 1)[1]
    )
    html = client.get(f"{link}/esito").get_data(as_text=True)
    assert paypal_server.money_moved(order_id) == 0  # no capture on a GET
    assert client.post(f"{link}/esito", data={"csrf_token": csrf_token(html)}).status_code == 303
    assert paypal_server.money_moved(order_id) == 1
    _renewed_once(session_factory, mailbox_id)
    # PayPal's PAYMENT.CAPTURE.COMPLETED for that capture renews nothing more.
    captured = paypal_server.orders[order_id]["purchase_units"][0]["payments"]["captures"][0]
    event = paypal_event("PAYMENT.CAPTURE.COMPLETED", captured)
    response = client.post(
        "/webhooks/paypal",
        data=json.dumps(event),
        headers=paypal_server.signed_headers(event),
        content_type="application/json",
    )
    assert response.status_code == 200
    assert client.post(f"{link}/esito", data={"csrf_token": csrf_token(html)}).status_code == 303
    assert paypal_server.money_moved(order_id) == 1
    _renewed_once(session_factory, mailbox_id)


def test_paypal_capture_recorded_by_its_webhook_first_renews_once(on_paypal, session_factory, paypal_server):
    """Our capture went through but its answer was never recorded (the process died): PayPal's
    PAYMENT.CAPTURE.COMPLETED completes the renewal, and the holder's return then changes nothing."""
    runtime, client = on_paypal
    mailbox_id, link = _charged(runtime, session_factory, "paypal.auth")
    (order_id,) = paypal_server.orders
    paypal_server.payer_acts(order_id)
    html = client.get(f"{link}/esito").get_data(as_text=True)
    with session_factory() as session:
        key = session.scalar(select(ChargeIntent.idempotency_key))
    assert runtime.gateway.finish_authentication(reference=order_id, idempotency_key=key).reference == order_id
    with session_factory() as session:
        assert session.scalars(select(ChargeIntent.status)).all() == ["requires_authentication"]
    captured = paypal_server.orders[order_id]["purchase_units"][0]["payments"]["captures"][0]
    event = paypal_event("PAYMENT.CAPTURE.COMPLETED", captured)
    response = client.post(
        "/webhooks/paypal",
        data=json.dumps(event),
        headers=paypal_server.signed_headers(event),
        content_type="application/json",
    )
    assert response.status_code == 200
    _renewed_once(session_factory, mailbox_id)
    assert client.post(f"{link}/esito", data={"csrf_token": csrf_token(html)}).status_code == 303
    assert paypal_server.money_moved(order_id) == 1
    _renewed_once(session_factory, mailbox_id)
