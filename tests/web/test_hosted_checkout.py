"""Card and PayPal orders paid on Stripe's and PayPal's own pages, against the local servers."""

from __future__ import annotations

from datetime import date
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.gateway_webhooks import (
    paypal_event,
    stripe_event,
    stripe_signature,
)
from tests.support.link_handler import csrf_token, link_path, row_counts
from tests.support.web_flow import post_form, start, walk_to_confirm
from worker.store.models import Mailbox, Payment, RenewalOrder

EXPIRY = date(2027, 2, 10)


@pytest.fixture
def settings(gateway_settings):
    return gateway_settings


def confirmed_order(client, runtime, session_factory, method: str) -> tuple[str, int]:
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        session.commit()
        mailbox_id, link = mailbox.id, link_path(runtime, mailbox)
    order = start(client, link)
    walk_to_confirm(client, order, mailbox_id, plan="pro", method=method, years="1")
    assert post_form(client, f"{order}/conferma").status_code == 303
    return order, mailbox_id


def go_to_gateway(client, order) -> str:
    first = client.get(f"{order}/pagamento")
    assert first.status_code == 303 and first.headers["Location"] == f"{order}/pagamento/sicuro"
    response = post_form(client, f"{order}/pagamento/sicuro")
    assert response.status_code == 303
    return response.headers["Location"]


def order_row(session_factory):
    with session_factory() as session:
        return session.scalar(select(RenewalOrder))


def test_stripe_checkout_session_then_return_then_webhook(client, runtime, session_factory, stripe_server):
    order, mailbox_id = confirmed_order(client, runtime, session_factory, "card")
    placed = order_row(session_factory)

    location = go_to_gateway(client, order)

    (session_id,) = stripe_server.sessions
    assert location == f"https://checkout.stripe.com/c/pay/{session_id}"
    (created,) = stripe_server.sent("POST", "/v1/checkout/sessions")
    form = created.form
    assert form["mode"] == "payment" and form["client_reference_id"] == placed.order_number
    assert form["line_items[0][price_data][unit_amount]"] == str(placed.total_cents)
    assert form["line_items[0][price_data][currency]"] == "eur"
    assert form["customer"].startswith("cus_") and form["payment_intent_data[setup_future_usage]"] == "off_session"
    assert form["success_url"].endswith("/pagamento/esito?session_id={CHECKOUT_SESSION_ID}")
    assert form["cancel_url"].endswith("/pagamento/annullato")
    assert created.headers["idempotency-key"] == f"checkout:{placed.id}:1"

    # Back before Stripe confirmed: "being confirmed", never an error.
    back = urlsplit(stripe_server.sessions[session_id]["success_url"])
    page = client.get(f"{back.path}?{back.query}")
    assert page.status_code == 200 and "Pagamento in corso di conferma" in page.get_data(as_text=True)

    paid = stripe_server.pay(session_id)
    before = row_counts(session_factory)
    page = client.get(f"{back.path}?{back.query}")
    assert page.status_code == 200 and "Pagamento ricevuto" in page.get_data(as_text=True)
    assert row_counts(session_factory) == before  # the GET read Stripe and wrote nothing

    payload = stripe_event("checkout.session.completed", paid)
    response = client.post(
        "/webhooks/stripe", data=payload, headers={"Stripe-Signature": stripe_signature(payload)},
        content_type="application/json",
    )  # fmt: skip
    assert response.json == {"outcome": "registered"}
    with session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.expires_on == date(2028, 2, 10)
        assert mailbox.auto_renew and mailbox.payment_method == f"{paid['customer']}.pm_card_visa"
        (payment,) = session.scalars(select(Payment)).all()
        assert payment.reference == f"stripe:{paid['payment_intent']}"
    assert "Rinnovo registrato" in client.get(order).get_data(as_text=True)


def test_stripe_cancel_expired_and_foreign_returns(client, runtime, session_factory, stripe_server):
    order, _ = confirmed_order(client, runtime, session_factory, "card")
    go_to_gateway(client, order)
    (session_id,) = stripe_server.sessions

    cancelled = client.get(f"{order}/pagamento/annullato")
    html = cancelled.get_data(as_text=True)
    assert cancelled.status_code == 200 and "nulla è stato addebitato" in html
    assert f'action="{order}/pagamento/sicuro"' in html  # try again

    foreign = client.get(f"{order}/pagamento/esito?session_id=cs_test_someone_else")
    assert foreign.status_code == 303 and foreign.headers["Location"] == order

    stripe_server.expire(session_id)
    expired = client.get(f"{order}/pagamento/esito?session_id={session_id}")
    assert expired.status_code == 303 and expired.headers["Location"] == order
    html = client.get(order).get_data(as_text=True)
    assert "non è andato a buon fine" in html and f"{order}/pagamento" in html

    # A second attempt is a new session under a new key.
    go_to_gateway(client, order)
    keys = [request.headers["idempotency-key"] for request in stripe_server.sent("POST", "/v1/checkout/sessions")]
    assert keys[0].endswith(":1") and keys[1].endswith(":2")


def test_stripe_unreachable_on_return_says_being_confirmed(client, runtime, session_factory, stripe_server):
    order, _ = confirmed_order(client, runtime, session_factory, "card")
    go_to_gateway(client, order)
    (session_id,) = stripe_server.sessions
    stripe_server.stop()
    page = client.get(f"{order}/pagamento/esito?session_id={session_id}")
    assert page.status_code == 200 and "Pagamento in corso di conferma" in page.get_data(as_text=True)


def test_paypal_order_approved_then_captured_on_return(client, runtime, session_factory, paypal_server):
    order, mailbox_id = confirmed_order(client, runtime, session_factory, "paypal")
    placed = order_row(session_factory)

    location = go_to_gateway(client, order)

    (created,) = [r for r in paypal_server.sent("POST", "/v2/checkout/orders")]
    body = created.json
    paypal = body["payment_source"]["paypal"]
    assert location == f"https://www.paypal.com/checkoutnow?token={[*paypal_server.orders][0]}"
    assert body["intent"] == "CAPTURE" and body["purchase_units"][0]["custom_id"] == placed.order_number
    assert body["purchase_units"][0]["amount"] == {
        "currency_code": "EUR", "value": f"{placed.total_cents // 100}.{placed.total_cents % 100:02d}",
    }  # fmt: skip
    assert paypal["experience_context"]["return_url"].endswith(f"{order}/pagamento/esito")
    assert paypal["attributes"]["vault"] == {"store_in_vault": "ON_SUCCESS", "usage_type": "MERCHANT"}

    back = urlsplit(paypal_server.approve([*paypal_server.orders][0]))
    page = client.get(f"{back.path}?{back.query}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Confermi per completarlo" in html
    assert paypal_server.sent("POST", "/v2/checkout/orders/") == []  # the GET captured nothing

    token = csrf_token(html)
    first = client.post(f"{back.path}?{back.query}", data={"csrf_token": token})
    second = client.post(f"{back.path}?{back.query}", data={"csrf_token": token})
    assert first.status_code == second.status_code == 303 and first.headers["Location"] == order
    assert len(paypal_server.captures) == 1
    with session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.expires_on == date(2028, 2, 10)
        assert mailbox.auto_renew and mailbox.payment_method.startswith("paypal.VLT")
        (payment,) = session.scalars(select(Payment)).all()
    assert "Rinnovo registrato" in client.get(order).get_data(as_text=True)

    # PayPal's webhook for the same capture finds it registered.
    capture = paypal_server.orders[[*paypal_server.orders][0]]["purchase_units"][0]["payments"]["captures"][0]
    event = paypal_event("PAYMENT.CAPTURE.COMPLETED", capture)
    response = client.post("/webhooks/paypal", json=event, headers=paypal_server.signed_headers(event))
    assert response.json == {"outcome": "already_registered"}
    assert payment.reference == f"paypal:{capture['id']}"
