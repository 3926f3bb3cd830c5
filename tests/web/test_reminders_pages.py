"""/avvisi/<token> (the reminders' List-Unsubscribe URL) and "Non intendo rinnovare" on the renewal page.

The one-click POST of RFC 8058 needs no cookie and no CSRF token; every other POST does; a GET
writes nothing.
"""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token, link_path, row_counts
from tests.support.tokens import tampered
from worker.services.daily import run_day
from worker.store.models import Base, Mailbox, OutboxMessage

EXPIRY = date(2027, 2, 10)  # the clock stands at 2027-01-10: the one-month notice is due
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def every_row(session_factory) -> dict[str, list[tuple]]:
    """Every row of every table, as plain values: what a request that writes nothing leaves as it was."""
    with session_factory() as session:
        return {
            table.name: [tuple(row) for row in session.execute(select(table).order_by(*table.primary_key.columns))]
            for table in Base.metadata.sorted_tables
        }


def reminder(runtime, session_factory, clock, *, count=1, language="it", **kwargs):
    """The day's reminder for ``count`` mailboxes of one holder; its /avvisi/ path and the mailbox ids."""
    with session_factory() as session:
        ids = [
            make_mailbox(
                session, expires_on=EXPIRY, reference_email="studio@example.it", language=language, **kwargs
            ).id
            for _ in range(count)
        ]
        session.commit()
    assert run_day(runtime, clock.today).delivery.sent == 1
    with session_factory() as session:
        message = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "expiry-notice")).one()
        url = runtime.signer.reminders_url(message.message_id)
    return url.removeprefix(runtime.settings.base_url), ids


def opt_outs(session_factory, ids):
    with session_factory() as session:
        return [
            (box.reminders_opt_out_for, box.reminders_opt_out_via)
            for box in session.scalars(select(Mailbox).where(Mailbox.id.in_(ids)).order_by(Mailbox.id))
        ]


def test_the_get_explains_the_choice_and_writes_nothing(client, runtime, session_factory, clock):
    path, ids = reminder(runtime, session_factory, clock, address="mario@pec.provider.example.it")
    before = every_row(session_factory)
    for _ in range(3):  # a mail scanner prefetching, the holder, a reload
        response = client.get(path)
        assert response.status_code == 200
        assert_security_headers(response)
    assert every_row(session_factory) == before
    html = response.get_data(as_text=True)
    assert "mario@pec.provider.example.it" in html
    assert "10 febbraio 2027" in html and "12 maggio 2027" in html  # expiry, and deletion 90 days after it
    assert "sarà cancellata 90 giorni dopo la scadenza" in html
    assert "Sospendi gli avvisi" in html and csrf_token(html)
    assert 'lang="it"' in html


def test_one_click_needs_no_cookie_nor_csrf_and_is_idempotent(app, runtime, session_factory, clock):
    path, ids = reminder(runtime, session_factory, clock, count=3)
    client = app.test_client()  # CSRF on, no cookie: as a mail provider's server posts
    response = client.post(path, data=ONE_CLICK)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert "Avvisi di scadenza sospesi" in response.get_data(as_text=True)
    assert opt_outs(session_factory, ids) == [(EXPIRY, "one-click")] * 3
    with session_factory() as session:
        first_at = session.get(Mailbox, ids[0]).reminders_opt_out_at

    counts = row_counts(session_factory)
    again = app.test_client().post(path, data=ONE_CLICK, headers={"Origin": "https://mail.example.com"})
    assert again.status_code == 200
    assert row_counts(session_factory) == counts
    with session_factory() as session:
        assert session.get(Mailbox, ids[0]).reminders_opt_out_at == first_at


def test_one_click_as_multipart_form_data_works_too(app, runtime, session_factory, clock):
    path, ids = reminder(runtime, session_factory, clock)
    response = app.test_client().post(path, data=ONE_CLICK, content_type="multipart/form-data")
    assert response.status_code == 200
    assert opt_outs(session_factory, ids) == [(EXPIRY, "one-click")]


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_bad_token_is_the_broken_link_page_and_writes_nothing(client, runtime, session_factory, clock, method):
    path, ids = reminder(runtime, session_factory, clock)
    token = path.rsplit("/", 1)[1]
    with session_factory() as session:
        mailbox = session.get(Mailbox, ids[0])
        renewal_token = link_path(runtime, mailbox).rsplit("/", 1)[1]
    before = every_row(session_factory)
    for bad in (tampered(token), "nonsense", renewal_token, token + "x"):
        response = getattr(client, method)(f"/avvisi/{bad}", data=ONE_CLICK if method == "post" else None)
        assert response.status_code == 404
        assert "Link non valido o scaduto" in response.get_data(as_text=True)
    assert every_row(session_factory) == before


def test_the_link_of_an_email_that_is_not_a_reminder_is_refused(client, runtime, session_factory, clock):
    with session_factory() as session:
        make_mailbox(session, expires_on=date(2027, 2, 9), auto_renew=True, payment_method="pm_card_visa")
        session.commit()
    run_day(runtime, clock.today)
    with session_factory() as session:
        charge_notice = session.scalars(select(OutboxMessage)).one()
        assert charge_notice.kind == "charge-notice"
        path = runtime.signer.reminders_url(charge_notice.message_id).removeprefix(runtime.settings.base_url)
    assert client.get(path).status_code == 404
    assert client.post(path, data=ONE_CLICK).status_code == 404


def test_the_page_buttons_need_their_csrf_token(client, runtime, session_factory, clock):
    path, ids = reminder(runtime, session_factory, clock)
    before = every_row(session_factory)
    assert client.post(path, data={"action": "opt-out"}).status_code == 400
    assert client.post(path, data={"List-Unsubscribe": "Other", "action": "opt-out"}).status_code == 400
    assert every_row(session_factory) == before

    token = csrf_token(client.get(path).get_data(as_text=True))
    assert client.post(path, data={"action": "delete", "csrf_token": token}).status_code == 400
    response = client.post(path, data={"action": "opt-out", "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == path
    assert opt_outs(session_factory, ids) == [(EXPIRY, "page")]
    html = client.get(path).get_data(as_text=True)
    assert "sono sospesi" in html and "12 maggio 2027" in html
    assert "Riattiva gli avvisi" in html and "/rinnova/" in html  # undo, or renew after all

    response = client.post(path, data={"action": "opt-in", "csrf_token": token})
    assert response.status_code == 303
    assert opt_outs(session_factory, ids) == [(None, None)]
    assert "Sospendi gli avvisi" in client.get(path).get_data(as_text=True)


def test_the_page_is_in_english_for_an_english_holder(client, runtime, session_factory, clock):
    path, _ids = reminder(runtime, session_factory, clock, language="en")
    html = client.get(path).get_data(as_text=True)
    assert 'lang="en"' in html and "Unsubscribe" in html and "12 May 2027" in html


def test_a_renewed_mailbox_has_nothing_to_opt_out_of(client, runtime, session_factory, clock):
    path, ids = reminder(runtime, session_factory, clock)
    with session_factory() as session:
        session.get(Mailbox, ids[0]).expires_on = date(2028, 2, 10)
        session.commit()
    response = client.post(path, data=ONE_CLICK)
    assert response.status_code == 200
    assert opt_outs(session_factory, ids) == [(None, None)]
    html = client.get(path).get_data(as_text=True)
    assert "già stata rinnovata" in html and "Sospendi gli avvisi" not in html


class TestTheRenewalPage:
    def test_it_offers_non_intendo_rinnovare_and_its_get_writes_nothing(self, client, runtime, session_factory):
        with session_factory() as session:
            mailbox = make_mailbox(session, expires_on=EXPIRY)
            session.commit()
            path, mailbox_id = link_path(runtime, mailbox), mailbox.id
        before = every_row(session_factory)
        html = client.get(path).get_data(as_text=True)
        assert every_row(session_factory) == before
        assert "Non intendo rinnovare" in html and f'action="{path}/avvisi"' in html

        token = csrf_token(html)
        assert client.post(f"{path}/avvisi", data={"action": "opt-out"}).status_code == 400  # no CSRF token
        assert every_row(session_factory) == before
        response = client.post(f"{path}/avvisi", data={"action": "opt-out", "csrf_token": token})
        assert response.status_code == 303 and response.headers["Location"] == path
        assert opt_outs(session_factory, [mailbox_id]) == [(EXPIRY, "renewal-page")]

        html = client.get(path).get_data(as_text=True)
        assert "non intende rinnovare" in html and "12 maggio 2027" in html
        assert "Riattiva gli avvisi" in html and "Rinnova" in html  # the order can still be started
        client.post(f"{path}/avvisi", data={"action": "opt-in", "csrf_token": token})
        assert opt_outs(session_factory, [mailbox_id]) == [(None, None)]

    def test_an_auto_renew_mailbox_is_not_offered_it(self, client, runtime, session_factory):
        with session_factory() as session:
            mailbox = make_mailbox(session, expires_on=EXPIRY, auto_renew=True, payment_method="pm_card_visa")
            session.commit()
            path, mailbox_id = link_path(runtime, mailbox), mailbox.id
        html = client.get(path).get_data(as_text=True)
        assert "Non intendo rinnovare" not in html
        client.post(f"{path}/avvisi", data={"action": "opt-out", "csrf_token": csrf_token(html)})
        assert opt_outs(session_factory, [mailbox_id]) == [(None, None)]
