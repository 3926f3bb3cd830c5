"""End to end in a real headless Chromium (Debian's, driven by Playwright).

A notice from the daily job lands in a Maildir; its Rinnova link is opened in
the browser, the order is placed with a bank transfer, the transfer is
registered through the payments service, and the mailbox is renewed.
CI installs the browser with ``scripts/install-browser``.
"""

from __future__ import annotations

import logging
import re
from datetime import date

import pytest
from sqlalchemy import select

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, links_in, maildir_messages, needs_chromium, served_app
from tests.support.factories import make_mailbox
from worker.services import payments
from worker.services.daily import run_day
from worker.store.models import Mailbox, RenewalOrder

pytestmark = needs_chromium


@pytest.fixture
def served(tmp_path, database_url, session_factory, clock):
    with served_app(tmp_path, database_url, session_factory, clock) as served:
        yield served


def _renewal_link_from_maildir(path, base_url: str) -> str:
    links = [link for message in maildir_messages(path) for link in links_in(message, base_url, "rinnova")]
    assert len(links) == 1, links
    return links[0]


def test_from_the_email_to_a_renewed_mailbox_in_chromium(served, session_factory, clock, caplog):
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    caplog.set_level(logging.INFO)
    expiry = date(2027, 2, 10)  # the clock stands at 2027-01-10: the one-month notice is due
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=expiry, plan="pro", address="studio@pec.provider.example.it")
        session.commit()
        mailbox_id = mailbox.id
    summary = run_day(runtime, clock.today)
    assert summary.delivery.sent == 1
    link = _renewal_link_from_maildir(runtime.settings.maildir, base_url)
    token = link.rsplit("/", 1)[1]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
            page = context.new_page()
            page.goto(link)
            assert "studio@pec.provider.example.it" in page.content()
            page.get_by_role("button", name="Rinnova", exact=True).click()
            assert "/ordine/" in page.url and token not in page.url
            page.wait_for_selector("h1:has-text('Gestione caselle PEC')")
            page.get_by_role("button", name="Prosegui e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Dati intestatario')")
            page.get_by_role("button", name="Prosegui e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Modulo ordine')")
            page.get_by_label("Bonifico bancario").check()
            page.select_option("select[name=years]", "1")
            page.get_by_role("button", name="Prosegui e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Condizioni contrattuali')")
            page.get_by_label("Ho letto e accetto le condizioni generali di contratto").check()
            page.get_by_label("Approvo specificamente le clausole").check()
            page.get_by_role("button", name="Prosegui").click()
            page.wait_for_selector("h1:has-text('Conferma e completa')")
            page.get_by_role("button", name="Conferma e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Ordine confermato')")
            order_number = page.locator(".order-number").first.inner_text().strip()
            assert re.fullmatch(r"PEC-\d{4}-\d{6,}", order_number)
            assert runtime.settings.bank_iban in page.content()
            page.screenshot(path=str(runtime.settings.var_dir / "confirmation.png"), full_page=True)

            # The bank transfer arrives: registered by hand, as `pec-renewal payments register` does.
            with session_factory() as session:
                order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == order_number))
                payments.register_payment(
                    session,
                    order_number=order_number,
                    amount_cents=order.total_cents,
                    method="bank_transfer",
                    reference=f"BONIFICO {order_number} CRO 123456",
                    now=clock(),
                    today=clock.today,
                    settings=runtime.settings,
                )
                session.commit()
            page.reload()
            page.wait_for_selector("h1:has-text('Rinnovo registrato')")
            assert "10 febbraio 2028" in page.content()
            page.goto(link)
            assert "già stata rinnovata" in page.content()
        finally:
            browser.close()

    with session_factory() as session:
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 2, 10)
    assert "/rinnova/[redacted]" in caplog.text  # werkzeug's request log was written ...
    assert token not in caplog.text  # ... without the token


def test_renew_all_three_mailboxes_from_one_notice_in_chromium(served, session_factory, clock):
    """A grouped notice's "Rinnova tutte", at phone width with JavaScript off: one order for the three
    mailboxes of the email, paid by bank transfer, and all three renewed."""
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    expiry = date(2027, 2, 10)  # the clock stands at 2027-01-10: the one-month notice is due
    addresses = [f"{name}@pec.provider.example.it" for name in ("amministrazione", "direzione", "segreteria")]
    with session_factory() as session:
        ids = [
            make_mailbox(session, expires_on=expiry, reference_email="studio@example.it", address=address).id
            for address in addresses
        ]
        session.commit()
    assert run_day(runtime, clock.today).delivery.sent == 1
    (message,) = maildir_messages(runtime.settings.maildir)
    text = message.get_body(("plain",)).get_content()
    (link,) = re.findall(r"^Rinnova tutte le 3 caselle con un unico ordine: (\S+)$", text, flags=re.M)
    assert link.startswith(f"{base_url}/rinnova/")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
            page = context.new_page()
            page.goto(link)
            page.wait_for_selector("h1:has-text('Rinnovo delle caselle PEC')")
            assert all(address in page.content() for address in addresses)
            page.get_by_role("button", name="Rinnova", exact=True).click()
            page.wait_for_selector("h1:has-text('Gestione caselle PEC')")
            for mailbox_id in ids:  # the three start selected
                assert page.locator(f"input[name=renew-{mailbox_id}]").is_checked()
            page.get_by_role("button", name="Prosegui e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Dati intestatario')")
            page.get_by_role("button", name="Prosegui e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Modulo ordine')")
            page.get_by_label("Bonifico bancario").check()
            page.select_option("select[name=years]", "1")
            page.get_by_role("button", name="Prosegui e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Condizioni contrattuali')")
            page.get_by_label("Ho letto e accetto le condizioni generali di contratto").check()
            page.get_by_label("Approvo specificamente le clausole").check()
            page.get_by_role("button", name="Prosegui").click()
            page.wait_for_selector("h1:has-text('Conferma e completa')")
            assert all(address in page.content() for address in addresses)
            page.get_by_role("button", name="Conferma e completa l'ordine").click()
            page.wait_for_selector("h1:has-text('Ordine confermato')")
            order_number = page.locator(".order-number").first.inner_text().strip()
            page.screenshot(path=str(runtime.settings.var_dir / "renew-all-confirmation.png"), full_page=True)

            with session_factory() as session:
                order = session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == order_number))
                assert sorted(line.mailbox_id for line in order.lines if line.selected) == sorted(ids)
                payments.register_payment(
                    session,
                    order_number=order_number,
                    amount_cents=order.total_cents,
                    method="bank_transfer",
                    reference=f"BONIFICO {order_number}",
                    now=clock(),
                    today=clock.today,
                    settings=runtime.settings,
                )
                session.commit()
            page.reload()
            page.wait_for_selector("h1:has-text('Rinnovo registrato')")
            page.goto(link)
            page.wait_for_selector("h1:has-text('Rinnovo già effettuato')")
        finally:
            browser.close()

    with session_factory() as session:
        assert [session.get(Mailbox, mailbox_id).expires_on for mailbox_id in ids] == [date(2028, 2, 10)] * 3
