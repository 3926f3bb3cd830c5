"""The auto-renew page's "replace the method" on Stripe's and PayPal's own pages, against the local
servers: a Checkout Session in setup mode, a PayPal vault setup token then its payment token."""

from __future__ import annotations

from datetime import date
from urllib.parse import urlsplit

import pytest

from tests.support.factories import make_mailbox
from tests.support.link_handler import csrf_token
from tests.support.rows import every_row
from worker.store.models import Mailbox

EXPIRY = date(2027, 1, 30)  # the clock stands at 2027-01-10


@pytest.fixture
def settings(gateway_settings):
    return gateway_settings


@pytest.fixture
def mailbox_id(session_factory, settings):
    token = "cus_000001.pm_card_chargeDeclined" if settings.payment_gateway == "stripe" else "paypal.VLTOLD"
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session, expires_on=EXPIRY, address="studio@pec.provider.example.it", auto_renew=True,
            payment_method=token, card_expires_on=date(2027, 2, 28),
        )  # fmt: skip
        session.flush()
        return mailbox.id


def stored(session_factory, mailbox_id: int) -> tuple[str | None, date | None]:
    with session_factory() as session:
        mailbox = session.get_one(Mailbox, mailbox_id)
        return mailbox.payment_method, mailbox.card_expires_on


def to_gateway(client, runtime, mailbox_id) -> tuple[str, str]:
    """The holder asks to replace the method: (the auto-renew page's path, the gateway page's URL)."""
    path = "/rinnovo-automatico/" + runtime.signer.auto_renew_token(mailbox_id)
    page = client.get(path).get_data(as_text=True)
    assert "Sostituisci il metodo di pagamento" in page
    response = client.post(path + "/metodo", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 303
    return path, response.headers["Location"]


def local(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def test_a_card_saved_on_stripe_s_setup_page_is_the_new_method(
    client, runtime, session_factory, mailbox_id, stripe_server
):
    path, hosted = to_gateway(client, runtime, mailbox_id)
    assert hosted.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    session_id = hosted.rsplit("/", 1)[1]
    (created,) = stripe_server.sent("POST", "/v1/checkout/sessions")
    assert created.form["mode"] == "setup" and created.form["currency"] == "eur"
    assert created.form["customer"].startswith("cus_")
    assert created.form["success_url"] == (
        "https://rinnovi.example.test/rinnovo-automatico/metodo/esito?session_id={CHECKOUT_SESSION_ID}"
    )
    assert runtime.signer.auto_renew_token(mailbox_id) not in created.body.decode()  # no token leaves for Stripe

    back = local(stripe_server.set_up(session_id, "pm_1NewCard", exp=(8, 2031)))
    before = every_row(session_factory)
    page = client.get(back)
    assert page.status_code == 200 and every_row(session_factory) == before  # the GET saves nothing
    html = page.get_data(as_text=True)
    assert "Conferma il nuovo metodo" in html
    done = client.post(back, data={"csrf_token": csrf_token(html)})
    assert done.status_code == 303 and done.headers["Location"].endswith(path)
    assert stored(session_factory, mailbox_id) == (f"{created.form['customer']}.pm_1NewCard", date(2031, 8, 31))
    assert "Il nuovo metodo di pagamento è stato registrato" in client.get(path).get_data(as_text=True)


def test_a_stripe_return_for_another_session_or_an_unfinished_one_changes_nothing(
    client, runtime, session_factory, mailbox_id, stripe_server
):
    _path, hosted = to_gateway(client, runtime, mailbox_id)
    session_id = hosted.rsplit("/", 1)[1]
    other = client.get("/rinnovo-automatico/metodo/esito?session_id=cs_test_999999")
    assert other.status_code == 404
    back = f"/rinnovo-automatico/metodo/esito?session_id={session_id}"
    html = client.get(back).get_data(as_text=True)
    refused = client.post(back, data={"csrf_token": csrf_token(html)})  # the holder never saved a card
    assert refused.status_code == 303
    assert stored(session_factory, mailbox_id) == ("cus_000001.pm_card_chargeDeclined", date(2027, 2, 28))
    # Another browser (no session cookie) cannot use the return URL.
    assert client.application.test_client().get(back).status_code == 404


def test_a_paypal_account_approved_on_paypal_s_page_is_the_new_method(
    client, runtime, session_factory, mailbox_id, paypal_server
):
    path, hosted = to_gateway(client, runtime, mailbox_id)
    assert hosted.startswith("https://www.sandbox.paypal.com/agreements/approve?approval_session_id=")
    (created,) = paypal_server.sent("POST", "/v3/vault/setup-tokens")
    context = created.json["payment_source"]["paypal"]["experience_context"]
    assert context["return_url"] == "https://rinnovi.example.test/rinnovo-automatico/metodo/esito"
    assert context["cancel_url"] == "https://rinnovi.example.test/rinnovo-automatico/metodo/annullato"
    token_id = hosted.rsplit("=", 1)[1]

    back = local(paypal_server.approve_setup(token_id))
    html = client.get(back).get_data(as_text=True)
    done = client.post(back, data={"csrf_token": csrf_token(html)})
    assert done.status_code == 303 and done.headers["Location"].endswith(path)
    (payment_token,) = paypal_server.payment_tokens
    assert stored(session_factory, mailbox_id)[0] == f"paypal.{payment_token}"
    (made,) = paypal_server.sent("POST", "/v3/vault/payment-tokens")
    assert made.json == {"payment_source": {"token": {"id": token_id, "type": "SETUP_TOKEN"}}}


def test_a_paypal_setup_the_payer_left_keeps_the_stored_method(
    client, runtime, session_factory, mailbox_id, paypal_server
):
    path, _hosted = to_gateway(client, runtime, mailbox_id)
    left = client.get("/rinnovo-automatico/metodo/annullato")
    assert left.status_code == 303 and left.headers["Location"].endswith(path)
    assert stored(session_factory, mailbox_id)[0] == "paypal.VLTOLD"
