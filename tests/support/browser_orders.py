"""An order placed in the browser, from its Rinnova link to its confirmation (the end-to-end tests)."""

from __future__ import annotations

from datetime import date

from tests.support.factories import make_mailbox
from tests.support.link_handler import link_path

NEXT = "Prosegui e completa l'ordine"


def a_mailbox(session_factory, runtime, base_url) -> tuple[int, str]:
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10), plan="pro", address="studio@pec.example.it")
        session.commit()
        return mailbox.id, base_url + link_path(runtime, mailbox)


def order_up_to_confirmation(page, link: str, method_label: str) -> str:
    """From the Rinnova link to the confirmed order; returns its number."""
    page.goto(link)
    page.get_by_role("button", name="Rinnova", exact=True).click()
    page.wait_for_selector("h1:has-text('Gestione caselle PEC')")
    page.get_by_role("button", name=NEXT).click()
    page.wait_for_selector("h1:has-text('Dati intestatario')")
    page.get_by_role("button", name=NEXT).click()
    page.wait_for_selector("h1:has-text('Modulo ordine')")
    page.get_by_label(method_label).check()
    page.get_by_role("button", name=NEXT).click()
    page.wait_for_selector("h1:has-text('Condizioni contrattuali')")
    page.get_by_label("Ho letto e accetto le condizioni generali di contratto").check()
    page.get_by_label("Approvo specificamente le clausole").check()
    page.get_by_role("button", name="Prosegui").click()
    page.wait_for_selector("h1:has-text('Conferma e completa')")
    page.get_by_role("button", name="Conferma e completa l'ordine").click()
    page.wait_for_selector("h1:has-text('Ordine confermato')")
    return page.locator(".order-number").first.inner_text().strip()
