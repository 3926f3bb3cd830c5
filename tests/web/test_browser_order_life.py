"""End to end in headless Chromium, JavaScript off, at a phone's width: a declined card, then a switch
to bank transfer; and a cancel, then a new order from the same link."""

from __future__ import annotations

import re
from datetime import date

import pytest
from sqlalchemy import select

from tests.support.browser import inside_the_width, needs_chromium, phone_page, served_app
from tests.support.browser_orders import a_mailbox, order_up_to_confirmation
from worker.services import payments
from worker.store.models import Mailbox, RenewalOrder

pytestmark = needs_chromium


@pytest.fixture
def served(tmp_path, database_url, session_factory, clock):
    with served_app(tmp_path, database_url, session_factory, clock) as served:
        yield served


def test_a_declined_card_then_a_bank_transfer(served, session_factory, clock):
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    mailbox_id, link = a_mailbox(session_factory, runtime, base_url)
    with sync_playwright() as playwright, phone_page(playwright) as page:
        number = order_up_to_confirmation(page, link, "Carta di credito")
        page.get_by_role("link", name="Paga ora con Carta di credito").click()
        page.wait_for_selector("h1:has-text('Pagamento dell')")
        page.get_by_label("Carta rifiutata").check()
        page.get_by_role("button", name=re.compile(r"^Paga ")).click()
        page.wait_for_selector("text=Il pagamento è stato rifiutato")
        # The decline page offers every method still allowed, not only the card.
        switch = page.get_by_role("button", name="Cambia modalità di pagamento")
        assert inside_the_width(switch)
        for label in ("PayPal", "Bonifico bancario", "Bollettino postale"):
            assert page.get_by_label(label).count() == 1, label
        page.screenshot(path=str(runtime.settings.var_dir / "declined.png"), full_page=True)
        page.get_by_label("Bonifico bancario").check()
        switch.click()
        page.wait_for_selector("h2:has-text('Pagamento con bonifico bancario')")
        assert runtime.settings.bank_iban in page.content() and number in page.content()
        page.screenshot(path=str(runtime.settings.var_dir / "decline-then-bank-transfer.png"), full_page=True)

        with session_factory() as session:
            order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == number))
            assert (order.payment_method, order.status) == ("bank_transfer", "awaiting_payment")
            payments.register_payment(
                session, order_number=number, amount_cents=order.total_cents, method="bank_transfer",
                reference=f"BONIFICO {number}", now=clock(), today=clock.today, settings=runtime.settings,
            )  # fmt: skip
            session.commit()
        page.reload()
        page.wait_for_selector("h1:has-text('Rinnovo registrato')")
    with session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.expires_on == date(2028, 2, 10) and not mailbox.auto_renew  # paid by transfer: no auto-renew


def test_a_cancel_then_a_new_order(served, session_factory):
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    _mailbox_id, link = a_mailbox(session_factory, runtime, base_url)
    with sync_playwright() as playwright, phone_page(playwright) as page:
        number = order_up_to_confirmation(page, link, "Bonifico bancario")
        page.get_by_role("link", name="Annulla l'ordine").click()
        page.wait_for_selector(f"h1:has-text('Annullamento dell\\'ordine {number}')")
        # A GET of the confirmation page changed nothing.
        with session_factory() as session:
            assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"
        button = page.get_by_role("button", name="Annulla l'ordine")
        assert inside_the_width(button)
        button.click()
        page.wait_for_selector("h1:has-text('Ordine annullato')")
        with session_factory() as session:
            assert session.scalar(select(RenewalOrder.status)) == "cancelled"
        page.screenshot(path=str(runtime.settings.var_dir / "cancelled.png"), full_page=True)

        # The Rinnova link is not blocked for the rest of the cycle: a new order starts.
        page.goto(link)
        page.get_by_role("button", name="Rinnova", exact=True).click()
        page.wait_for_selector("h1:has-text('Gestione caselle PEC')")
    with session_factory() as session:
        assert sorted(session.scalars(select(RenewalOrder.status))) == ["cancelled", "draft"]
