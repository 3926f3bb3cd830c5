"""End to end in a real headless Chromium, JavaScript off, at phone width: a reminder arrives over SMTP,
its List-Unsubscribe page opts out of the reminders, and no reminder comes again down to the deletion."""

from __future__ import annotations

import logging
import re
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, PHONE, links_in, maildir_messages, needs_chromium, served_app
from tests.support.factories import make_mailbox
from worker.rules.schedule import deletion_date
from worker.services.daily import run_day
from worker.store.models import Mailbox, MailboxSchedule

pytestmark = needs_chromium

EXPIRY = date(2027, 2, 10)  # the clock stands at 2027-01-10: the one-month notice is due


@pytest.fixture
def served(tmp_path, database_url, session_factory, clock):
    with served_app(tmp_path, database_url, session_factory, clock) as served:
        yield served


def run_on(runtime, clock, day: date):
    clock.today = day
    return run_day(runtime, day)


def test_opt_out_of_the_reminders_from_the_email_then_none_comes_again(served, session_factory, clock, caplog):
    from playwright.sync_api import sync_playwright

    runtime, base_url = served
    caplog.set_level(logging.INFO)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, address="studio@pec.provider.example.it")
        session.commit()
        mailbox_id = mailbox.id
    assert run_on(runtime, clock, clock.today).delivery.sent == 1
    (notice,) = maildir_messages(runtime.settings.maildir)
    assert notice["X-PEC-Renewal-Kind"] == "expiry-notice"
    assert notice["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # (The Maildir copy is read back through the mailbox module, which may fold the long line.)
    url = re.fullmatch(r"<(\S+)>", notice["List-Unsubscribe"].strip()).group(1)
    assert url.startswith(f"{base_url}/avvisi/")
    token = url.rsplit("/", 1)[1]
    (renewal_link,) = links_in(notice, base_url, "rinnova")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(java_script_enabled=False, viewport=PHONE)
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("h1:has-text('Avvisi di scadenza')")
            assert "studio@pec.provider.example.it" in page.content()
            assert "12 maggio 2027" in page.content()  # the deletion date, 90 days after the expiry
            button = page.get_by_role("button", name="Sospendi gli avvisi")
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            page.screenshot(path=str(runtime.settings.var_dir / "reminders-page.png"), full_page=True)
            button.click()
            page.wait_for_selector("text=sono sospesi")
            assert page.url == url  # POST, redirect, GET
            assert page.get_by_role("button", name="Riattiva gli avvisi").is_visible()
            page.screenshot(path=str(runtime.settings.var_dir / "reminders-opted-out.png"), full_page=True)

            # The renewal page says so and offers the undo; undone, it offers "Non intendo rinnovare".
            page.goto(renewal_link)
            page.wait_for_selector("text=Ha comunicato che non intende rinnovare")
            page.get_by_role("button", name="Riattiva gli avvisi").click()
            undone = page.get_by_role("button", name="Non intendo rinnovare")
            box = undone.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            page.screenshot(path=str(runtime.settings.var_dir / "renewal-page.png"), full_page=True)
            undone.click()
            page.wait_for_selector("text=Ha comunicato che non intende rinnovare")
            assert page.url == renewal_link

            # A mail client's one-click POST on the same link, without the page's cookie: 2xx, no change.
            one_click = browser.new_context().request.post(url, form={"List-Unsubscribe": "One-Click"})
            assert one_click.status == 200
        finally:
            browser.close()

    with session_factory() as session:
        opted_out = session.get(Mailbox, mailbox_id)
        assert (opted_out.reminders_opt_out_for, opted_out.reminders_opt_out_via) == (EXPIRY, "renewal-page")

    # Every day down to the deletion: no reminder any more (-15d, -7d, -1d, 0d, +1d, +30d, +60d, +83d).
    skipped = 0
    day = clock.today + timedelta(days=1)
    while day <= deletion_date(EXPIRY):
        summary = run_on(runtime, clock, day)
        skipped += summary.scan.skipped.get("opted-out", 0)
        day += timedelta(days=1)
    assert len(maildir_messages(runtime.settings.maildir)) == 1
    assert skipped == 8
    with session_factory() as session:
        assert (
            session.scalar(select(MailboxSchedule.next_action_on).where(MailboxSchedule.mailbox_id == mailbox_id))
            is None
        )

    assert "/avvisi/[redacted]" in caplog.text  # werkzeug's request log was written ...
    assert token not in caplog.text  # ... without the token
