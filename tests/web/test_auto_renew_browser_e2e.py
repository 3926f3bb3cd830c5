"""End to end in a real headless Chromium, JavaScript off, at a phone's width: auto-renew switched off.

The charge notice's "Gestisci il rinnovo automatico" link opens the auto-renew page; the
holder switches auto-renew off and confirms; the days that follow charge nothing, and the
manual notices of the remaining stages come with their Rinnova link, which opens a renewal.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, PHONE, links_in, maildir_messages, needs_chromium, served_app
from tests.support.factories import make_mailbox
from worker.gateways.sandbox import list_charges
from worker.services.daily import run_day
from worker.store.models import ChargeIntent, Mailbox

pytestmark = needs_chromium

EXPIRY = date(2027, 1, 30)
CHARGE_NOTICE_DAY = EXPIRY - timedelta(days=30)
SWITCH_DAY = EXPIRY - timedelta(days=20)


@pytest.fixture
def served(tmp_path, database_url, session_factory, clock):
    with served_app(tmp_path, database_url, session_factory, clock) as served:
        yield served


def _run_days(runtime, clock, first: date, last: date) -> None:
    day = first
    while day <= last:
        clock.today = day
        run_day(runtime, day)
        day += timedelta(days=1)


def test_switched_off_on_a_phone_then_no_charge_and_the_manual_notices_follow(served, session_factory, clock, caplog):
    from playwright.sync_api import sync_playwright

    caplog.set_level(logging.INFO)
    runtime, base_url = served
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session,
            expires_on=EXPIRY,
            address="studio@pec.provider.example.it",
            auto_renew=True,
            payment_method="pm_card_visa",
            reference_email="studio.bianchi@example.it",
        )
        session.flush()
        mailbox_id = mailbox.id
    _run_days(runtime, clock, CHARGE_NOTICE_DAY - timedelta(days=1), CHARGE_NOTICE_DAY)
    (notice,) = maildir_messages(runtime.settings.maildir)
    assert notice["X-PEC-Renewal-Kind"] == "charge-notice"
    (page_link,) = links_in(notice, base_url, "rinnovo-automatico")

    clock.today = SWITCH_DAY
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(java_script_enabled=False, viewport=PHONE)
            page = context.new_page()
            page.goto(page_link)
            state = page.locator(".auto-renew-state").inner_text()
            assert state.strip() == "attivo"
            content = page.content()
            assert "23 gennaio 2027" in content and "Visa •••• 4242" in content
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(runtime.settings.var_dir / "auto-renew-on.png"), full_page=True)
            page.get_by_role("button", name="Disattiva").click()
            page.wait_for_selector("h1:has-text('Disattivare il rinnovo automatico?')")
            page.screenshot(path=str(runtime.settings.var_dir / "auto-renew-confirm.png"), full_page=True)
            page.get_by_role("button", name="Conferma").click()
            page.wait_for_selector("text=Il rinnovo automatico è stato disattivato")
            assert page.locator(".auto-renew-state").inner_text().strip() == "disattivato"
            assert page.url == page_link
            page.screenshot(path=str(runtime.settings.var_dir / "auto-renew-off.png"), full_page=True)

            _run_days(runtime, clock, SWITCH_DAY, EXPIRY)
            manual = {
                message["X-PEC-Renewal-Stage"]: message
                for message in maildir_messages(runtime.settings.maildir)
                if message["X-PEC-Renewal-Kind"] != "charge-notice"
            }
            assert sorted(manual) == sorted(["-15d", "-7d", "-1d", "0d"])
            assert {message["X-PEC-Renewal-Kind"] for message in manual.values()} == {"expiry-notice"}
            (renew_link,) = links_in(manual["-7d"], base_url, "rinnova")
            page.goto(renew_link)
            page.get_by_role("button", name="Rinnova", exact=True).click()
            page.wait_for_selector("h1:has-text('Gestione caselle PEC')")
        finally:
            browser.close()

    assert list_charges(session_factory) == []
    with session_factory() as session:
        assert session.scalars(select(ChargeIntent)).all() == []
        stored = session.get_one(Mailbox, mailbox_id)
        assert (stored.auto_renew, stored.expires_on) == (False, EXPIRY)
    token = page_link.rsplit("/", 1)[1]
    assert "/rinnovo-automatico/[redacted]" in caplog.text  # the request log was written ...
    assert token not in caplog.text  # ... without the token
