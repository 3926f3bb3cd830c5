"""The auto-renew page with the Flask test client: what GET shows, and each switch behind its confirmation."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest

from tests.support.factories import make_mailbox
from tests.support.invoices import give_holder
from tests.support.link_handler import assert_security_headers, csrf_token, link_path
from tests.support.rows import every_row
from tests.support.tokens import tampered
from worker.rules.links import redact
from worker.store.models import ChargeIntent, Mailbox, NoticeLedgerEntry

EXPIRY = date(2027, 1, 30)  # the clock stands at 2027-01-10: 20 days before expiry, charge on 2027-01-23


@pytest.fixture
def mailbox_id(session_factory):
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session,
            expires_on=EXPIRY,
            address="studio@pec.provider.example.it",
            auto_renew=True,
            payment_method="pm_card_visa",
        )
        session.flush()
        return mailbox.id


def _path(runtime, mailbox_id: int) -> str:
    return "/rinnovo-automatico/" + runtime.signer.auto_renew_token(mailbox_id)


def _stored(session_factory, mailbox_id: int) -> Mailbox:
    with session_factory() as session:
        return session.get_one(Mailbox, mailbox_id)


def _post(client, path: str, page_html: str, **fields):
    return client.post(path, data={"csrf_token": csrf_token(page_html), **fields})


def test_get_shows_state_next_charge_amount_and_masked_method_and_changes_no_row(
    client, runtime, session_factory, mailbox_id
):
    before = every_row(session_factory)
    response = client.get(_path(runtime, mailbox_id))
    assert response.status_code == 200
    assert_security_headers(response)
    html = response.get_data(as_text=True)
    assert "studio@pec.provider.example.it" in html
    assert "attivo" in html and "23 gennaio 2027" in html
    assert "Visa •••• 4242" in html and "pm_card_visa" not in html
    assert "€" in html
    assert "Disattiva il rinnovo automatico" in html
    assert every_row(session_factory) == before


def test_switch_off_asks_for_confirmation_then_switches(client, runtime, session_factory, mailbox_id):
    path = _path(runtime, mailbox_id)
    page = client.get(path).get_data(as_text=True)
    before = every_row(session_factory)
    confirm = _post(client, path + "/disattiva", page, cycle=EXPIRY.isoformat())
    assert confirm.status_code == 200
    html = confirm.get_data(as_text=True)
    assert "Conferma: disattiva il rinnovo automatico" in html
    assert "30 gennaio 2027" in html
    assert every_row(session_factory) == before  # the confirmation page writes nothing

    done = _post(client, path + "/disattiva", html, cycle=EXPIRY.isoformat(), confirmed="yes")
    assert done.status_code == 303 and done.headers["Location"].endswith(path)
    assert _stored(session_factory, mailbox_id).auto_renew is False
    after = client.get(path).get_data(as_text=True)
    assert "Il rinnovo automatico è stato disattivato" in after
    assert "Riattiva il rinnovo automatico" in after
    assert "/rinnova/" in after  # the way to renew by hand


def test_switch_back_on_behind_its_confirmation(client, runtime, session_factory, mailbox_id):
    with session_factory() as session, session.begin():
        session.get_one(Mailbox, mailbox_id).auto_renew = False
    path = _path(runtime, mailbox_id)
    page = client.get(path).get_data(as_text=True)
    confirm = _post(client, path + "/attiva", page, cycle=EXPIRY.isoformat())
    assert "Conferma: riattiva il rinnovo automatico" in confirm.get_data(as_text=True)
    assert _stored(session_factory, mailbox_id).auto_renew is False
    done = _post(client, path + "/attiva", confirm.get_data(as_text=True), confirmed="yes")
    assert done.status_code == 303
    assert _stored(session_factory, mailbox_id).auto_renew is True
    assert "è stato riattivato" in client.get(path).get_data(as_text=True)


def test_no_switch_on_without_a_stored_method(client, runtime, session_factory, mailbox_id):
    with session_factory() as session, session.begin():
        stored = session.get_one(Mailbox, mailbox_id)
        stored.auto_renew, stored.payment_method = False, None
    html = client.get(_path(runtime, mailbox_id)).get_data(as_text=True)
    assert "Riattiva" not in html and "serve un metodo di pagamento registrato" in html
    done = _post(client, _path(runtime, mailbox_id) + "/attiva", html, confirmed="yes")
    assert done.status_code == 303
    assert _stored(session_factory, mailbox_id).auto_renew is False


def test_the_holder_is_told_when_the_charge_won(client, runtime, session_factory, mailbox_id):
    path = _path(runtime, mailbox_id)
    page = client.get(path).get_data(as_text=True)
    with session_factory() as session, session.begin():  # the charge claims the cycle meanwhile
        session.add(
            ChargeIntent(
                mailbox_id=mailbox_id,
                cycle_expires_on=EXPIRY,
                attempt=1,
                idempotency_key=f"renewal:{mailbox_id}:{EXPIRY}:1",
                amount_cents=1000,
                currency="EUR",
                payment_method="pm_card_visa",
                years=1,
                status="started",
                business_date=date(2027, 1, 10),
                created_at=datetime(2027, 1, 10, 11, tzinfo=UTC),
            )
        )
    done = _post(client, path + "/disattiva", page, cycle=EXPIRY.isoformat(), confirmed="yes")
    assert done.status_code == 303
    assert _stored(session_factory, mailbox_id).auto_renew is True
    html = client.get(path).get_data(as_text=True)
    assert "era già in corso" in html and "non è stato disattivato" in html
    assert "Disattiva il rinnovo automatico" not in html  # nothing to switch while it runs


def test_the_holder_is_told_when_a_renewal_moved_the_expiry(client, runtime, session_factory, mailbox_id):
    path = _path(runtime, mailbox_id)
    page = client.get(path).get_data(as_text=True)
    with session_factory() as session, session.begin():
        session.get_one(Mailbox, mailbox_id).expires_on = date(2028, 1, 30)
    _post(client, path + "/disattiva", page, cycle=EXPIRY.isoformat(), confirmed="yes")
    assert _stored(session_factory, mailbox_id).auto_renew is True
    assert "la nuova scadenza è il 30 gennaio 2028" in client.get(path).get_data(as_text=True)


def test_replace_the_method_on_the_sandbox_hosted_page(client, runtime, session_factory, mailbox_id):
    path = _path(runtime, mailbox_id)
    page = client.get(path).get_data(as_text=True)
    to_gateway = _post(client, path + "/metodo", page)
    assert to_gateway.status_code == 303 and to_gateway.headers["Location"].endswith(path + "/metodo/sandbox")
    before = every_row(session_factory)
    hosted = client.get(path + "/metodo/sandbox")
    assert hosted.status_code == 200 and every_row(session_factory) == before
    html = hosted.get_data(as_text=True)
    assert "Conferma il nuovo metodo" in html
    done = _post(client, path + "/metodo/sandbox", html, payment_token="paypal_ok")
    assert done.status_code == 303
    saved = _stored(session_factory, mailbox_id).payment_method
    assert saved.startswith("paypal_sbx_")  # a method the sandbox stored, not the test token chosen
    assert "PayPal" in client.get(path).get_data(as_text=True)
    refused = _post(client, path + "/metodo/sandbox", html, payment_token="not-offered")
    assert refused.status_code == 422
    assert _stored(session_factory, mailbox_id).payment_method == saved


def test_every_post_needs_its_csrf_token(client, runtime, session_factory, mailbox_id):
    path = _path(runtime, mailbox_id)
    client.get(path)
    before = every_row(session_factory)
    for action in ("/disattiva", "/attiva", "/metodo", "/metodo/sandbox"):
        response = client.post(path + action, data={"confirmed": "yes", "payment_token": "pm_card_visa"})
        assert response.status_code == 400, action
    assert every_row(session_factory) == before


def test_a_bad_or_foreign_token_is_the_broken_link_page(client, runtime, session_factory, mailbox_id):
    with session_factory() as session:
        mailbox = session.get_one(Mailbox, mailbox_id)
        renewal_token = link_path(runtime, mailbox).rsplit("/", 1)[1]
    for token in (renewal_token, "abc", tampered(_path(runtime, mailbox_id).rsplit("/", 1)[1])):
        response = client.get("/rinnovo-automatico/" + token)
        assert response.status_code == 404
        assert "Link non valido o scaduto" in response.get_data(as_text=True)
    assert client.get(_path(runtime, 10**12)).status_code == 404
    # And the other way round: the auto-renew page's token opens no renewal.
    assert client.get("/rinnova/" + _path(runtime, mailbox_id).rsplit("/", 1)[1]).status_code == 404


def test_the_link_page_of_an_auto_renew_mailbox_leads_to_the_auto_renew_page(
    client, runtime, session_factory, mailbox_id
):
    with session_factory() as session:
        html = client.get(link_path(runtime, session.get_one(Mailbox, mailbox_id))).get_data(as_text=True)
    (token,) = re.findall(r'href="/rinnovo-automatico/([A-Za-z0-9_\-.]+)"', html)
    assert runtime.signer.read_auto_renew_token(token) == mailbox_id
    assert "area clienti PEC con le credenziali" not in html


def test_the_token_is_redacted_from_log_lines(runtime, mailbox_id):
    path = _path(runtime, mailbox_id)
    token = path.rsplit("/", 1)[1]
    assert token not in redact(f"GET {path}/disattiva HTTP/1.1")


def test_the_page_in_english_for_an_english_holder(client, runtime, session_factory):
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=EXPIRY, auto_renew=True, payment_method="paypal_ok", language="en")
        session.flush()
        path = _path(runtime, mailbox.id)
    html = client.get(path).get_data(as_text=True)
    assert "Auto-renew of your PEC mailbox" in html and "23 January 2027" in html and "PayPal" in html
    assert "Switch auto-renew off" in html and "Disattiva" not in html
    confirm = _post(client, path + "/disattiva", html, cycle=EXPIRY.isoformat())
    assert "Confirm: switch auto-renew off" in confirm.get_data(as_text=True)


def test_after_a_failed_charge_the_page_says_so_and_offers_the_renewal(client, runtime, session_factory, mailbox_id):
    with session_factory() as session, session.begin():
        session.add(
            ChargeIntent(
                mailbox_id=mailbox_id,
                cycle_expires_on=EXPIRY,
                attempt=1,
                idempotency_key=f"renewal:{mailbox_id}:{EXPIRY}:1",
                amount_cents=1000,
                currency="EUR",
                payment_method="pm_card_visa",
                years=1,
                status="hard_decline",
                business_date=date(2027, 1, 10),
                created_at=datetime(2027, 1, 10, 11, tzinfo=UTC),
            )
        )
        session.add(
            NoticeLedgerEntry(
                mailbox_id=mailbox_id,
                cycle_expires_on=EXPIRY,
                stage="-20d",
                kind="charge-failed",
                business_date=date(2027, 1, 10),
            )
        )
    html = client.get(_path(runtime, mailbox_id)).get_data(as_text=True)
    assert "l&#39;addebito per questa scadenza non è riuscito" in html
    assert "/rinnova/" in html and "Riattiva" not in html


def test_a_switch_the_page_does_not_offer_is_told_why_and_changes_nothing(client, runtime, session_factory, mailbox_id):
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=EXPIRY, auto_renew=True, domain="studio.example.it")
        session.flush()
        path = _path(runtime, mailbox.id)
    html = client.get(path).get_data(as_text=True)
    assert "si rinnova con il dominio" in html and "<form" not in html
    with_form = client.get(_path(runtime, mailbox_id)).get_data(as_text=True)  # this browser's CSRF token
    before = every_row(session_factory)
    response = _post(client, path + "/disattiva", with_form, cycle=EXPIRY.isoformat())
    assert response.status_code == 303
    assert "non può essere modificato" in client.get(path).get_data(as_text=True)
    assert every_row(session_factory) == before


def test_a_public_administration_is_shown_the_taxable_amount_under_split_payment(
    client, runtime, session_factory, mailbox_id
):
    with session_factory() as session, session.begin():
        give_holder(session, session.get_one(Mailbox, mailbox_id), "public_administration")
    path = _path(runtime, mailbox_id)
    html = client.get(path).get_data(as_text=True)
    assert "(IVA esclusa, in scissione dei pagamenti)" in html and "(IVA inclusa)" not in html
    _post(client, path + "/disattiva", html, cycle=EXPIRY.isoformat(), confirmed="yes")
    confirm = _post(client, path + "/attiva", client.get(path).get_data(as_text=True), cycle=EXPIRY.isoformat())
    assert confirm.status_code == 200
    text = " ".join(confirm.get_data(as_text=True).split())
    assert "con un addebito di 5,00 € (IVA esclusa, in scissione dei pagamenti) su Visa •••• 4242" in text
