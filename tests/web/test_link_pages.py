"""GET /rinnova/<token>: one page per state of the link, and never a write."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from tests.support.factories import make_mailbox
from tests.support.link_handler import account_link_path, assert_security_headers, csrf_token, link_path, row_counts

EXPIRY = date(2027, 2, 10)  # the clock stands at 2027-01-10


def _page(client, path):
    response = client.get(path)
    return response, response.get_data(as_text=True)


def test_a_manual_mailbox_shows_a_summary_and_a_post_button(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, address="mario@pec.provider.example.it", plan="pro")
        session.commit()
        path = link_path(runtime, mailbox)
    before = row_counts(session_factory)
    for _ in range(3):  # a mail scanner prefetching, then the holder, then a reload
        response, html = _page(client, path)
        assert response.status_code == 200
        assert_security_headers(response)
    assert row_counts(session_factory) == before  # a GET writes nothing
    assert "mario@pec.provider.example.it" in html
    assert "Pro" in html and "10 febbraio 2027" in html
    assert 'method="post"' in html and csrf_token(html)
    assert "Rinnova" in html
    assert 'lang="it"' in html


def test_the_page_is_in_english_for_an_english_holder(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, language="en")
        session.commit()
        path = link_path(runtime, mailbox)
    response, html = _page(client, path)
    assert response.status_code == 200
    assert 'lang="en"' in html and "Renewing your PEC mailbox" in html and "10 February 2027" in html


def test_auto_renew_explains_how_to_switch_it_off_and_offers_the_plan_change(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, auto_renew=True, payment_method="pm_card_visa")
        session.commit()
        path = link_path(runtime, mailbox)
    before = row_counts(session_factory)
    response, html = _page(client, path)
    assert response.status_code == 200
    assert "Rinnovo automatico attivo" in html
    assert "non è possibile procedere al rinnovo manuale" in html
    assert "disattivare il rinnovo automatico" in html
    assert "cambiando tipologia" in html
    assert row_counts(session_factory) == before


def test_a_mailbox_on_a_customer_domain_is_renewed_with_the_domain(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, domain="rossi.it")
        session.commit()
        path = link_path(runtime, mailbox)
    response, html = _page(client, path)
    assert response.status_code == 200
    assert "rinnovando il dominio" in html
    assert 'method="post"' not in html


def test_an_already_renewed_cycle_says_so_with_the_new_expiry(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY)
        session.commit()
        path = link_path(runtime, mailbox)
        mailbox.expires_on = date(2028, 2, 10)
        session.commit()
    response, html = _page(client, path)
    assert response.status_code == 200
    assert "già stata rinnovata" in html and "10 febbraio 2028" in html
    assert 'method="post"' not in html


def test_a_deleted_mailbox_can_no_longer_be_renewed(client, runtime, session_factory, clock):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY)
        session.commit()
        path = link_path(runtime, mailbox)
    clock.today = EXPIRY + timedelta(days=91)
    response, html = _page(client, path)
    assert response.status_code == 410
    assert "non può più essere rinnovata" in html
    assert 'method="post"' not in html
    clock.today = EXPIRY + timedelta(days=90)  # the last renewable day
    response, html = _page(client, path)
    assert response.status_code == 200 and 'method="post"' in html
    assert "è scaduta" in html


def test_an_account_link_lists_every_mailbox_of_the_account_in_its_window(client, runtime, session_factory):
    with session_factory() as session:
        first = make_mailbox(
            session, expires_on=EXPIRY, reference_email="studio@example.it", address="a@pec.provider.example.it"
        )
        make_mailbox(
            session,
            expires_on=EXPIRY + timedelta(days=20),
            reference_email="studio@example.it",
            address="b@pec.provider.example.it",
        )
        make_mailbox(
            session,
            expires_on=EXPIRY + timedelta(days=400),
            reference_email="studio@example.it",
            address="later@pec.provider.example.it",
        )
        session.commit()
        path = account_link_path(runtime, first.account_id, EXPIRY)
    before = row_counts(session_factory)
    response, html = _page(client, path)
    assert response.status_code == 200
    assert "a@pec.provider.example.it" in html and "b@pec.provider.example.it" in html
    assert "later@pec.provider.example.it" not in html
    assert row_counts(session_factory) == before


def test_hostile_holder_names_are_escaped(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, holder_name='<script>alert(1)</script>"&')
        session.commit()
        path = link_path(runtime, mailbox)
    response, html = _page(client, path)
    assert response.status_code == 200
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;" in html


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_refused(client, runtime, session_factory, method):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY)
        session.commit()
        path = link_path(runtime, mailbox)
    before = row_counts(session_factory)
    response = client.open(path, method=method)
    assert response.status_code in (400, 405)
    assert row_counts(session_factory) == before
