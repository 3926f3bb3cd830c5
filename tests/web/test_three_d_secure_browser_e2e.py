"""End to end in headless Chromium, JavaScript off, at a phone's width: 3-D Secure on the sandbox.

A card that asks for the holder's authentication at checkout leads to the sandbox's challenge
page.  Approved, the payment is registered as any card payment, auto-renew goes on with the
card, and the next cycle's off-session charge on it succeeds.  Refused, the holder is back at
the checkout with every method still allowed, and switches to a bank transfer.  And an
off-session charge that asks for authentication is authenticated from its email's link.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from tests.support.browser import inside_the_width, links_in, maildir_messages, needs_chromium, phone_page, served_app
from tests.support.browser_orders import a_mailbox, order_up_to_confirmation
from worker.gateways.sandbox import SET_UP_ON_SESSION_TOKEN, list_charges
from worker.services.daily import run_day
from worker.store.models import ChargeIntent, Mailbox, RenewalOrder, SandboxChallenge, SandboxMethod

pytestmark = needs_chromium

RENEWED = date(2028, 2, 10)


@pytest.fixture
def served(tmp_path, database_url, session_factory, clock):
    with served_app(tmp_path, database_url, session_factory, clock) as served:
        yield served


def _pay_with(page, token_label: str) -> None:
    page.get_by_role("link", name="Paga ora con Carta di credito").click()
    page.wait_for_selector("h1:has-text('Pagamento dell')")
    page.get_by_label(re.compile("^" + re.escape(token_label) + " pm_")).check()
    page.get_by_role("button", name=re.compile(r"^Paga ")).click()
    page.wait_for_selector("h1:has-text('Autenticazione del pagamento')")


def test_a_challenge_approved_then_the_stored_card_is_charged_off_session(served, session_factory, clock):
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    mailbox_id, link = a_mailbox(session_factory, runtime, base_url)
    with sync_playwright() as playwright, phone_page(playwright, locale="it-IT") as page:
        number = order_up_to_confirmation(page, link, "Carta di credito")
        _pay_with(page, "Richiede autenticazione (3-D Secure) solo la prima volta")
        assert "/sandbox/3ds/" in page.url
        approve = page.get_by_role("button", name="Approva")
        assert inside_the_width(approve) and inside_the_width(page.get_by_role("button", name="Rifiuta"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(runtime.settings.var_dir / "3ds-challenge.png"), full_page=True)
        approve.click()
        page.wait_for_selector("h1:has-text('Rinnovo registrato')")
        assert number in page.content()
    with session_factory() as session:
        mailbox = session.get_one(Mailbox, mailbox_id)
        assert mailbox.expires_on == RENEWED
        assert mailbox.auto_renew
        kept = session.scalar(select(SandboxMethod).where(SandboxMethod.method_id == mailbox.payment_method))
        assert kept.behaviour == SET_UP_ON_SESSION_TOKEN  # the card kept for auto-renew
        assert session.scalar(select(RenewalOrder.status)) == "paid"
        assert session.scalars(select(SandboxChallenge.status)).all() == ["approved"]

    # The next cycle: the charge notice, then the charge on the stored card, off session.
    charge_day = RENEWED - timedelta(days=7)
    for day in (RENEWED - timedelta(days=30), charge_day):
        clock.today = day
        run_day(runtime, day)
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == date(2029, 2, 10)
        assert session.scalars(select(ChargeIntent.status)).all() == ["succeeded"]
    assert [row["outcome"] for row in list_charges(session_factory)] == ["succeeded", "succeeded"]
    kinds = sorted(message["X-PEC-Renewal-Kind"] for message in maildir_messages(runtime.settings.maildir))
    assert "charge-succeeded" in kinds and "charge-authentication-required" not in kinds


def test_a_challenge_refused_then_a_bank_transfer(served, session_factory):
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    mailbox_id, link = a_mailbox(session_factory, runtime, base_url)
    with sync_playwright() as playwright, phone_page(playwright, locale="it-IT") as page:
        number = order_up_to_confirmation(page, link, "Carta di credito")
        _pay_with(page, "Richiede autenticazione (3-D Secure)")
        page.get_by_role("button", name="Rifiuta").click()
        page.wait_for_selector("text=L'autenticazione del pagamento (3-D Secure) è stata rifiutata")
        assert "/pagamento" in page.url and "Errore" not in page.title()
        # Back at the checkout: try again, or any other method still allowed.
        assert page.get_by_role("button", name=re.compile(r"^Paga ")).count() == 1
        for label in ("PayPal", "Bonifico bancario", "Bollettino postale"):
            assert page.get_by_label(label).count() == 1, label
        page.screenshot(path=str(runtime.settings.var_dir / "3ds-refused.png"), full_page=True)
        page.get_by_label("Bonifico bancario").check()
        page.get_by_role("button", name="Cambia modalità di pagamento").click()
        page.wait_for_selector("h2:has-text('Pagamento con bonifico bancario')")
        assert runtime.settings.bank_iban in page.content() and number in page.content()
    with session_factory() as session:
        assert session.scalars(select(SandboxChallenge.status)).all() == ["refused"]
        order = session.scalar(select(RenewalOrder))
        assert (order.payment_method, order.status) == ("bank_transfer", "awaiting_payment")
        assert session.get_one(Mailbox, mailbox_id).expires_on == date(2027, 2, 10)


def test_an_off_session_charge_authenticated_from_its_email(served, session_factory, clock):
    from playwright.sync_api import sync_playwright

    from tests.support.factories import make_mailbox

    runtime, base_url = served
    expiry = date(2027, 3, 31)
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session, expires_on=expiry, auto_renew=True, payment_method="pm_card_authenticationRequired"
        )
        session.flush()
        mailbox_id = mailbox.id
    for day in (expiry - timedelta(days=30), expiry - timedelta(days=7)):
        clock.today = day
        run_day(runtime, day)
    (asked,) = [
        message
        for message in maildir_messages(runtime.settings.maildir)
        if message["X-PEC-Renewal-Kind"] == "charge-authentication-required"
    ]
    (link,) = links_in(asked, base_url, "rinnovo-automatico/autenticazione")
    with sync_playwright() as playwright, phone_page(playwright, locale="it-IT") as page:
        page.goto(link)
        button = page.get_by_role("button", name="Autentica il pagamento")
        assert inside_the_width(button)
        page.screenshot(path=str(runtime.settings.var_dir / "3ds-off-session.png"), full_page=True)
        button.click()
        page.get_by_role("button", name="Approva").click()
        page.wait_for_selector("h1:has-text('Rinnovo completato')")
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == date(2028, 3, 31)
