"""The sandbox hosted checkout for card and PayPal orders."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token, link_path, row_counts
from tests.support.web_flow import post_form, start, walk_to_confirm
from worker.store.models import Mailbox, Payment, RenewalOrder, SandboxCharge, SandboxMethod

EXPIRY = date(2027, 2, 10)


def confirmed_order(client, runtime, session_factory, method: str) -> tuple[str, int]:
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        session.commit()
        mailbox_id, link = mailbox.id, link_path(runtime, mailbox)
    order = start(client, link)
    walk_to_confirm(client, order, mailbox_id, plan="pro", method=method, years="2")
    assert post_form(client, f"{order}/conferma").status_code == 303
    return order, mailbox_id


@pytest.mark.parametrize(
    "method, good, bad",
    [("card", "pm_card_visa", "pm_card_chargeDeclined"), ("paypal", "paypal_ok", "paypal_declined")],
)
def test_decline_then_retry_then_paid(client, runtime, session_factory, method, good, bad):
    order, mailbox_id = confirmed_order(client, runtime, session_factory, method)
    page = client.get(order).get_data(as_text=True)
    assert f"{order}/pagamento" in page and "rinnovo automatico" in page
    checkout = client.get(f"{order}/pagamento")
    assert checkout.status_code == 200
    assert_security_headers(checkout)
    html = checkout.get_data(as_text=True)
    assert good in html and bad in html
    response = client.post(f"{order}/pagamento", data={"csrf_token": csrf_token(html), "payment_token": bad})
    assert response.status_code == 303 and response.headers["Location"].endswith("/pagamento")
    html = client.get(f"{order}/pagamento").get_data(as_text=True)
    assert "rifiutato" in html and "Nulla è stato addebitato" in html
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 0
        assert session.get(Mailbox, mailbox_id).expires_on == EXPIRY
    token = csrf_token(html)
    first = client.post(f"{order}/pagamento", data={"csrf_token": token, "payment_token": good})
    second = client.post(f"{order}/pagamento", data={"csrf_token": token, "payment_token": good})
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == order
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 1
        assert (
            session.scalar(select(func.count()).select_from(SandboxCharge).where(SandboxCharge.outcome == "succeeded"))
            == 1
        )
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.expires_on == date(2029, 2, 10)
        assert mailbox.auto_renew and mailbox.renewal_years == 2
        # The method the sandbox stored from the test token, as Stripe keeps a PaymentMethod.
        kept = session.scalar(select(SandboxMethod).where(SandboxMethod.method_id == mailbox.payment_method))
        assert kept.behaviour == good
        assert session.scalar(select(RenewalOrder.status)) == "paid"
    html = client.get(order).get_data(as_text=True)
    assert "Rinnovo registrato" in html and "10 febbraio 2029" in html
    # The old link now says "already renewed".
    with session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
    old_link = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    assert "già stata rinnovata" in client.get(old_link).get_data(as_text=True)
    # And the checkout page of a paid order goes back to the order.
    assert client.get(f"{order}/pagamento").status_code == 303


def test_checkout_needs_csrf_and_a_token(client, runtime, session_factory):
    order, _ = confirmed_order(client, runtime, session_factory, "card")
    before = row_counts(session_factory)
    assert client.post(f"{order}/pagamento", data={"payment_token": "pm_card_visa"}).status_code == 400
    response = post_form(client, f"{order}/pagamento", {"payment_token": ""})
    assert response.status_code == 422
    response = post_form(client, f"{order}/pagamento", {"payment_token": "pm_card_visа"})  # Cyrillic а
    assert response.status_code == 422
    assert row_counts(session_factory) == before


def test_a_bank_transfer_order_has_no_checkout(client, runtime, session_factory):
    order, _ = confirmed_order(client, runtime, session_factory, "bank_transfer")
    response = client.get(f"{order}/pagamento")
    assert response.status_code == 303 and response.headers["Location"] == order


def test_another_browser_resumes_a_confirmed_order_from_the_rinnova_link(app, client, runtime, session_factory):
    order, mailbox_id = confirmed_order(client, runtime, session_factory, "card")
    other = app.test_client()  # say, the phone's mail app
    assert other.get(f"{order}/pagamento").status_code == 404  # the order is not in this browser's session
    link = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    html = other.get(link).get_data(as_text=True)
    # The link page shows the order awaiting payment, and the way to it.
    assert "Ordine in attesa di pagamento" in html and "Vai all&#39;ordine" in html
    response = post_form(other, link)
    assert response.status_code == 303 and response.headers["Location"] == order
    assert f"{order}/pagamento" in other.get(order).get_data(as_text=True)
    assert other.get(f"{order}/pagamento").status_code == 200


@pytest.mark.parametrize(
    "token", ["pm_card_authenticationRequired", "pm_card_authenticationRequiredSetupForOffSession"]
)
def test_a_card_that_asks_for_3_d_secure_goes_to_the_sandbox_challenge(client, runtime, session_factory, token):
    order, mailbox_id = confirmed_order(client, runtime, session_factory, "card")
    html = client.get(f"{order}/pagamento").get_data(as_text=True)
    response = client.post(f"{order}/pagamento", data={"csrf_token": csrf_token(html), "payment_token": token})
    assert response.status_code == 303, response.get_data(as_text=True)
    challenge = response.headers["Location"]
    assert challenge.startswith("/sandbox/3ds/")
    html = client.get(challenge).get_data(as_text=True)
    refused = client.post(f"{challenge}/rifiuta", data={"csrf_token": csrf_token(html)})
    assert refused.status_code == 303 and refused.headers["Location"] == f"{order}/pagamento"
    html = client.get(f"{order}/pagamento").get_data(as_text=True)
    assert "stata rifiutata" in html and "Cambia modalità di pagamento" in html
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"
        assert session.scalar(select(func.count()).select_from(Payment)) == 0
    # Tried again, and approved: registered as any card payment, once.
    response = client.post(f"{order}/pagamento", data={"csrf_token": csrf_token(html), "payment_token": token})
    challenge = response.headers["Location"]
    html = client.get(challenge).get_data(as_text=True)
    approved = client.post(f"{challenge}/approva", data={"csrf_token": csrf_token(html)})
    assert approved.headers["Location"] == f"{order}/pagamento"
    assert client.post(f"{challenge}/approva", data={"csrf_token": csrf_token(html)}).status_code == 303
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 1
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.expires_on == date(2029, 2, 10) and mailbox.auto_renew
        kept = session.scalar(select(SandboxMethod).where(SandboxMethod.method_id == mailbox.payment_method))
        assert kept.behaviour == token  # the card kept for auto-renew, as the sandbox stores it
        assert session.scalar(select(RenewalOrder.status)) == "paid"
