"""POST /api/v1/renewal-links: a Rinnova link on demand, behind a bearer token, at any time before deletion."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.link_handler import close_runtime, row_counts, runtime_on_test_database
from tests.support.settings import make_settings
from tests.support.web_flow import post_form, start, walk_to_confirm
from worker.rules import schedule
from worker.services import payments
from worker.store.models import Mailbox, RenewalOrder
from worker.web import create_app

API = "/api/v1/renewal-links"
API_TOKEN = "area-clienti-0123456789abcdef-0123456789abcdef"
BASE_URL = "https://rinnovi.example.test"
TODAY = date(2027, 1, 10)  # the tests' clock


@pytest.fixture
def api_runtime(tmp_path, database_url, session_factory, clock):
    settings = make_settings(tmp_path, database_url=database_url, api_token=API_TOKEN)
    rt = runtime_on_test_database(settings, session_factory, clock)
    yield rt
    close_runtime(rt)


@pytest.fixture
def api(api_runtime):
    return create_app(api_runtime).test_client()


def ask(client, body=None, *, token=API_TOKEN, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if body is not None:
        kwargs["json"] = body
    return client.post(API, headers=headers, **kwargs)


def mailbox_at(session_factory, expires_on: date, **fields) -> int:
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=expires_on, **fields)
        session.commit()
        return mailbox.id


# -- Who may ask ---------------------------------------------------------------------------------


def test_without_a_token_set_the_api_does_not_exist(client, session_factory):
    mailbox_at(session_factory, date(2027, 2, 10), address="studio@pec.provider.example.it")
    response = ask(client, {"address": "studio@pec.provider.example.it"})
    assert response.status_code == 404
    assert "/rinnova/" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Basic {API_TOKEN}",
        "Bearer",
        f"Bearer {API_TOKEN[:-1]}",
        f"Bearer {API_TOKEN}x",
        f"Bearer {API_TOKEN.upper()}",
        API_TOKEN,
    ],
)
def test_without_the_valid_token_the_answer_is_401(api, session_factory, authorization):
    mailbox_at(session_factory, date(2027, 2, 10), address="studio@pec.provider.example.it")
    headers = {} if authorization is None else {"Authorization": authorization}
    response = api.post(API, headers=headers, json={"address": "studio@pec.provider.example.it"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="renewal-links"'
    assert response.get_json()["error"] == "unauthorized"
    assert "/rinnova/" not in response.get_data(as_text=True)


def test_the_bearer_scheme_is_case_insensitive(api, session_factory):
    mailbox_at(session_factory, date(2027, 2, 10), address="studio@pec.provider.example.it")
    response = api.post(
        API, headers={"Authorization": f"bearer {API_TOKEN}"}, json={"address": "studio@pec.provider.example.it"}
    )
    assert response.status_code == 200


def test_only_post_is_answered(api):
    assert api.get(API, headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 405


# -- The body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"data": "address=studio@pec.provider.example.it"}, "JSON object"),
        ({"data": "{not json", "content_type": "application/json"}, "JSON object"),
        ({"json": ["studio@pec.provider.example.it"]}, "JSON object"),
        ({"json": "studio@pec.provider.example.it"}, "JSON object"),
        ({"json": {}}, '"address" must be a non-empty string'),
        ({"json": {"address": ""}}, '"address" must be a non-empty string'),
        ({"json": {"address": 12}}, '"address" must be a non-empty string'),
        ({"json": {"address": None}}, '"address" must be a non-empty string'),
        ({"json": {"address": "studio@pec.provider.example.it", "years": 2}}, "unknown field 'years'"),
        ({"json": {"address": "no-at-sign"}}, "is not a mailbox address"),
        ({"json": {"address": "a" * 250 + "@pec.it"}}, "is not a mailbox address"),
        ({"json": {"address": "studio@pec.provider.example.it\r\nBcc: x@y.it"}}, "is not a mailbox address"),
    ],
)
def test_a_bad_body_is_400_with_a_json_error(api, kwargs, says):
    response = api.post(API, headers={"Authorization": f"Bearer {API_TOKEN}"}, **kwargs)
    assert response.status_code == 400
    assert response.is_json
    body = response.get_json()
    assert body["error"] == "bad_request" and says in body["message"]


def test_an_unknown_address_is_404_with_a_json_error(api, session_factory):
    mailbox_at(session_factory, date(2027, 2, 10), address="studio@pec.provider.example.it")
    response = ask(api, {"address": "altro@pec.provider.example.it"})
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_a_mailbox_on_a_customer_domain_is_renewed_with_the_domain(api, session_factory):
    mailbox_at(session_factory, date(2027, 2, 10), domain="studio-rossi.it", address="info@pec.studio-rossi.it")
    response = ask(api, {"address": "info@pec.studio-rossi.it"})
    assert response.status_code == 409
    assert response.get_json()["error"] == "on_domain"


# -- The link ------------------------------------------------------------------------------------


def test_the_link_of_the_current_cycle_with_its_dates(api, api_runtime, session_factory):
    expiry = date(2027, 2, 10)
    mailbox_id = mailbox_at(session_factory, expiry, address="studio@pec.provider.example.it")
    before = row_counts(session_factory)
    response = ask(api, {"address": "  Studio@PEC.provider.example.it "})
    assert response.status_code == 200 and response.is_json
    body = response.get_json()
    assert set(body) == {"url", "expires_on", "deletion_on"}
    assert body["expires_on"] == "2027-02-10"
    assert body["deletion_on"] == "2027-05-12" == schedule.deletion_date(expiry).isoformat()
    assert body["url"].startswith(f"{BASE_URL}/rinnova/")
    link = api_runtime.signer.read_renewal_token(body["url"].rsplit("/", 1)[1])
    assert (link.target, link.target_id, link.expires_on) == ("m", mailbox_id, expiry)
    assert row_counts(session_factory) == before  # a request writes nothing


@pytest.mark.parametrize(
    ("expires_on", "status"),
    [
        (TODAY - timedelta(days=90), 200),  # the last renewable day
        (TODAY - timedelta(days=91), 410),  # today is its deletion date
        (TODAY - timedelta(days=400), 410),
    ],
)
def test_a_mailbox_is_offered_a_link_up_to_the_day_before_its_deletion(api, session_factory, expires_on, status):
    mailbox_at(session_factory, expires_on, address="scaduta@pec.provider.example.it")
    response = ask(api, {"address": "scaduta@pec.provider.example.it"})
    assert response.status_code == status
    if status == 410:
        assert response.get_json()["error"] == "deleted"
        assert schedule.deletion_date(expires_on) <= TODAY
    else:
        assert response.get_json()["deletion_on"] == (TODAY + timedelta(days=1)).isoformat()


def test_a_link_asked_for_before_the_notices_renews_from_the_current_expiry(api, session_factory, clock, api_runtime):
    """Eight months before expiry, long before the first notice: the link page, the order and the payment
    all accept it, and the new expiry is a year after the current one, not after today."""
    expiry = date(2027, 9, 30)
    mailbox_id = mailbox_at(session_factory, expiry, address="presto@pec.provider.example.it")
    url = ask(api, {"address": "presto@pec.provider.example.it"}).get_json()["url"]
    path = url.removeprefix(BASE_URL)
    page = api.get(path)
    assert page.status_code == 200
    assert "presto@pec.provider.example.it" in page.get_data(as_text=True)
    order = start(api, path)
    walk_to_confirm(api, order, mailbox_id)
    assert post_form(api, f"{order}/conferma").status_code == 303
    with session_factory() as session:
        row = session.scalar(select(RenewalOrder))
        assert row.status == "awaiting_payment"
        payments.register_payment(
            session,
            order_number=row.order_number,
            amount_cents=row.total_cents,
            method="bank_transfer",
            reference=f"BONIFICO {row.order_number}",
            now=clock(),
            today=clock.today,
            settings=api_runtime.settings,
        )
        session.commit()
    with session_factory() as session:
        assert session.get(Mailbox, mailbox_id).expires_on == date(2028, 9, 30)


# -- CSRF and logs -------------------------------------------------------------------------------


def test_only_the_api_is_exempt_from_the_csrf_check(api, api_runtime, session_factory):
    mailbox_at(session_factory, date(2027, 2, 10), address="studio@pec.provider.example.it")
    url = ask(api, {"address": "studio@pec.provider.example.it"}).get_json()["url"]
    # The link page's button, posted without its form token, is still refused.
    response = api.post(url.removeprefix(BASE_URL), data={})
    assert response.status_code == 400
    with session_factory() as session:
        assert session.scalar(select(RenewalOrder)) is None


def test_neither_the_api_token_nor_the_link_is_logged(api, session_factory, caplog):
    caplog.set_level(logging.DEBUG)
    mailbox_at(session_factory, date(2027, 2, 10), address="studio@pec.provider.example.it")
    url = ask(api, {"address": "studio@pec.provider.example.it"}).get_json()["url"]
    ask(api, {"address": "studio@pec.provider.example.it"}, token=API_TOKEN + "x")
    ask(api, {"address": "nessuna@pec.provider.example.it"})
    ask(api, {"bad": 1})
    logged = caplog.text + "".join(str(record.__dict__) for record in caplog.records)
    assert "a link issued for studio@pec.provider.example.it (expiry 2027-02-10)" in logged
    assert "without a valid bearer token was refused" in logged
    assert API_TOKEN not in logged
    assert url.rsplit("/", 1)[1] not in logged
