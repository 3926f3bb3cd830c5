"""The link page as Flask serves it: every state in both languages, its status and headers, the
templates compiled per language, and the session cookie and CSRF token the button posts back."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime

import pytest
from flask import render_template, url_for
from flask import session as flask_session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import validate_csrf
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select
from wtforms import ValidationError

from tests.support.factories import make_mailbox
from tests.support.link_handler import close_runtime, csrf_token, link_path, runtime_on_test_database
from tests.support.tokens import tampered
from worker.rules.links import MAILBOX, RenewalLink
from worker.services import orders
from worker.services.orders import LinkState
from worker.store.models import OrderStatus, RenewalOrder
from worker.web import create_app, i18n, templating

TODAY = date(2027, 3, 1)
NOW = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
EXPIRES = date(2027, 4, 30)
CSRF_SALT = "wtf-csrf-token"  # Flask-WTF's


def _link(mailbox, expires_on=None) -> RenewalLink:
    return RenewalLink(MAILBOX, mailbox.id, expires_on or mailbox.expires_on)


def _every_state(session_factory, settings) -> list[RenewalLink]:
    """Mailbox links in every state the page knows, in both languages, with a hostile holder name
    and orders to resume."""
    with session_factory() as session:
        plain = make_mailbox(
            session, expires_on=EXPIRES, plan="pro", holder_name='Anna <script>alert("x")</script> & C.'
        )
        auto = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_visa")
        on_domain = make_mailbox(session, expires_on=EXPIRES, domain="bianchi.example.it")
        renewed = make_mailbox(session, expires_on=date(2028, 4, 30), language="en")
        deleted = make_mailbox(session, expires_on=date(2026, 11, 30))
        expired = make_mailbox(session, expires_on=date(2027, 2, 10), language="en")
        ordered = make_mailbox(session, expires_on=EXPIRES)
        cancelled = make_mailbox(session, expires_on=EXPIRES)
        unpaid = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_chargeDeclined")
        session.commit()
        orders.start_order(session, _link(ordered), TODAY, NOW)
        orders.start_order(session, _link(cancelled), TODAY, NOW).status = OrderStatus.CANCELLED.value
        orders.create_unpaid_renewal_order(session, unpaid, 1, NOW, TODAY)
        session.commit()
        return [
            _link(plain), _link(auto), _link(on_domain), _link(renewed, date(2027, 4, 30)), _link(deleted),
            _link(expired), _link(ordered), _link(cancelled), _link(unpaid),
            _link(plain, date(2027, 5, 31)),  # a cycle it never had
        ]  # fmt: skip


def _session(app, response) -> dict:
    cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    return SecureCookieSessionInterface().get_signing_serializer(app).loads(cookie)  # Flask's own reader


def _path(runtime, link: RenewalLink) -> str:
    return "/rinnova/" + runtime.signer.renewal_token(MAILBOX, link.target_id, link.expires_on)


@pytest.fixture
def mailbox_path(runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        return link_path(runtime, mailbox)


# -- Every state ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_each_state_has_its_status_its_language_and_a_cookie_only_with_a_button(
    app, runtime, session_factory, settings, clock, scheme
):
    clock.today = TODAY
    seen = set()
    for link in _every_state(session_factory, settings):
        view = orders.read_mailbox_link(runtime.engine, link, TODAY)
        response = app.test_client().get(_path(runtime, link), base_url=f"{scheme}://localhost")
        html = response.get_data(as_text=True)
        seen.add((view.state, view.language))
        if view.state == LinkState.NOT_FOUND:
            assert response.status_code == 404 and "Link non valido o scaduto" in html
            continue
        assert response.status_code == (410 if view.state == LinkState.DELETED else 200), view.state
        assert f'<html lang="{view.language}">' in html and "<script>alert" not in html
        assert "Cookie" in response.headers["Vary"]
        public_https = settings.base_url.startswith("https://")
        assert ("Strict-Transport-Security" in response.headers) == (scheme == "https" or public_https)
        with_button = view.state in (LinkState.RENEWABLE, LinkState.AUTO_RENEW)
        assert ("Set-Cookie" in response.headers) == with_button, view.state
        if with_button:
            secret = _session(app, response)["csrf_token"]
            assert re.fullmatch(r"[0-9a-f]{40}", secret)
            serializer = URLSafeTimedSerializer(list(settings.secret_keys), salt=CSRF_SALT)
            assert serializer.loads(csrf_token(html)) == secret
    assert {state for state, _ in seen} == {value for name, value in vars(LinkState).items() if name.isupper()}
    assert {language for _, language in seen} == {"it", "en"}


# -- The templates compiled per language ------------------------------------------------------------------


@pytest.mark.parametrize("account_link", [False, True])
def test_the_language_compiled_link_page_is_the_page_t_writes(app, runtime, session_factory, settings, account_link):
    views = [orders.read_mailbox_link(runtime.engine, link, TODAY) for link in _every_state(session_factory, settings)]
    views = [view for view in views if view.state != LinkState.NOT_FOUND]
    assert {view.language for view in views} == {"it", "en"}
    for view in views:
        for language in ("it", "en"):
            with app.test_request_context("/"):
                i18n.set_language(language)
                context = dict(view=view, states=LinkState, form_token="tok<en>", account_link=account_link)
                expected = render_template("link.html", **context)
                compiled = render_template(templating.localised("link.html", language), **context)
            assert compiled == expected, (view.state, language)
            assert "<script>" not in compiled  # a holder name is escaped, compiled or not
            assert f'<html lang="{language}">' in compiled


def test_a_template_is_compiled_once_per_language_and_keeps_its_includes_in_it(app):
    env = app.jinja_env
    assert env.get_template("@it/link.html") is env.get_template("@it/link.html")
    assert env.get_template("@it/link.html") is not env.get_template("@en/link.html")
    assert env.join_path("base.html", "@en/link.html") == "@en/base.html"
    assert env.join_path("base.html", "link.html") == "base.html"
    with pytest.raises(ValueError):
        templating.localised("link.html", "fr")


def test_the_stylesheet_url_is_flasks_also_below_a_path(app, client, mailbox_path):
    with app.test_request_context("/", base_url="https://rinnovi.example.test/rinnovi"):
        assert (
            templating.static_url("style.css") == url_for("static", filename="style.css") == "/rinnovi/static/style.css"
        )
    with app.test_request_context("/"):
        assert templating.static_url("style.css") == "/static/style.css"
    response = client.get(mailbox_path, base_url="http://localhost/rinnovi")
    assert response.status_code == 200 and "/rinnovi/static/style.css" in response.get_data(as_text=True)


# -- The CSRF token and the session cookie -----------------------------------------------------------------


def test_the_link_page_carries_a_flask_wtf_token_that_every_post_checks(app, client, mailbox_path):
    response = client.get(mailbox_path)
    token = csrf_token(response.get_data(as_text=True))
    raw = _session(app, response)["csrf_token"]
    assert URLSafeTimedSerializer(app.secret_key, salt=CSRF_SALT).loads(token) == raw  # signed with the newest key
    with app.test_request_context("/"):
        flask_session["csrf_token"] = raw
        validate_csrf(token)  # what CSRFProtect runs on every POST
        with pytest.raises(ValidationError):
            validate_csrf(tampered(token))
        flask_session["csrf_token"] = "0" * 40
        with pytest.raises(ValidationError):
            validate_csrf(token)  # another browser's session
    assert client.post(mailbox_path, data={}).status_code == 400
    assert client.post(mailbox_path, data={"csrf_token": token}).status_code == 303


def test_the_first_visits_token_and_cookie_start_the_order_and_another_browsers_do_not(
    app, session_factory, mailbox_path
):
    client = app.test_client()
    page = client.get(mailbox_path)
    assert page.status_code == 200 and "Set-Cookie" in page.headers
    assert client.post(mailbox_path, data={}).status_code == 400  # no token: refused
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(RenewalOrder)) == 0
    response = client.post(mailbox_path, data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 303 and "/ordine/" in response.headers["Location"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(RenewalOrder)) == 1
    other = app.test_client().get(mailbox_path)
    fresh = app.test_client()
    fresh.get(mailbox_path)
    assert fresh.post(mailbox_path, data={"csrf_token": csrf_token(other.get_data(as_text=True))}).status_code == 400


def test_a_returning_browser_keeps_its_token_and_gets_no_new_cookie(app, client, mailbox_path):
    first = client.get(mailbox_path)
    raw = _session(app, first)["csrf_token"]
    second = client.get(mailbox_path)
    assert "Set-Cookie" not in second.headers  # the session it sent already holds the token
    assert "Cookie" in second.headers["Vary"]
    token = csrf_token(second.get_data(as_text=True))
    assert URLSafeTimedSerializer(app.secret_key, salt=CSRF_SALT).loads(token) == raw


def test_no_token_and_no_cookie_where_the_page_has_no_button(client, runtime, session_factory):
    with session_factory() as session:
        on_domain = make_mailbox(session, expires_on=date(2027, 2, 10), domain="bianchi.example.it")
        session.commit()
        path = link_path(runtime, on_domain)
    response = client.get(path)
    assert response.status_code == 200 and "csrf_token" not in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers


def test_with_csrf_off_the_page_has_no_token(runtime, mailbox_path):
    client = create_app(runtime, WTF_CSRF_ENABLED=False).test_client()
    response = client.get(mailbox_path)
    assert response.status_code == 200 and "csrf_token" not in response.get_data(as_text=True)


def test_a_public_https_base_url_sends_hsts_and_a_secure_cookie_over_http_too(settings, session_factory, clock):
    public = runtime_on_test_database(
        dataclasses.replace(settings, base_url="https://rinnovi.example.test"), session_factory, clock
    )
    try:
        with session_factory() as session:
            mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
            session.commit()
            path = link_path(public, mailbox)
        response = create_app(public).test_client().get(path)  # over http: TLS ends at a proxy
        assert response.status_code == 200
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "Secure" in response.headers["Set-Cookie"]
    finally:
        close_runtime(public)
