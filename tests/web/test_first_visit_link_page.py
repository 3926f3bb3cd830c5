"""A first visit of a mailbox link page is answered in front of Flask (worker.web.link_page), with Flask's answer.

Each answer is compared with the one Flask gives the same request from a
browser that sends a cookie (which Flask serves itself): the status, every
header in order, and the page, byte for byte once the random CSRF secret is
set aside.  The token and the cookie are then posted back through Flask.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date

import pytest
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from tests.factories import make_mailbox
from tests.web.conftest import account_link_path, close_runtime, csrf_token, link_path, runtime_on_test_database
from tests.web.test_link_page_fast_path import TODAY, _every_state
from worker.services import orders
from worker.rules.links import MAILBOX
from worker.store.models import RenewalOrder
from worker.web import create_app
from worker.web.link_page import FirstVisitLinkPage

_SECRET_RE = re.compile(r'(name="csrf_token" type="hidden" value=")[^"]+(")')


class ViewCalls:
    """Counts the requests Flask's link view serves."""

    def __init__(self, app):
        self.count = 0
        view = app.view_functions["web.renewal_link"]

        def counted(*args, **kwargs):
            self.count += 1
            return view(*args, **kwargs)

        app.view_functions["web.renewal_link"] = counted


@pytest.fixture
def app_and_calls(runtime, clock):
    clock.today = TODAY
    app = create_app(runtime)
    return app, ViewCalls(app)


def _flask_answer(app, path, **kwargs):
    client = app.test_client()
    client.set_cookie("other", "1")  # not the session: Flask starts a new one, as for a first visit
    return client.get(path, **kwargs)


def _session_secret(app, response) -> str:
    cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    return SecureCookieSessionInterface().get_signing_serializer(app).loads(cookie)["csrf_token"]


def _comparable(app, response):
    """Status, headers and page, with the session's random secret and its signatures set aside (checked apart)."""
    headers = [(name, value) for name, value in response.headers if name != "Set-Cookie"]
    cookie = response.headers.get("Set-Cookie")
    cookie_attributes = cookie.split(";", 1)[1] if cookie else None
    page = _SECRET_RE.sub(r"\1TOKEN\2", response.get_data(as_text=True))
    return response.status, headers, cookie_attributes, page


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_each_state_is_answered_as_flask_answers_it(app_and_calls, runtime, session_factory, settings, scheme):
    app, calls = app_and_calls
    links = _every_state(session_factory, settings)
    states = set()
    for link in links:
        path = "/rinnova/" + runtime.signer.renewal_token(MAILBOX, link.target_id, link.expires_on)
        view = orders.read_mailbox_link(runtime.engine, link, TODAY)
        before = calls.count
        fast = app.test_client().get(path, base_url=f"{scheme}://localhost")
        served_by_flask = calls.count - before
        flask = _flask_answer(app, path, base_url=f"{scheme}://localhost")
        assert calls.count - before == served_by_flask + 1
        assert _comparable(app, fast) == _comparable(app, flask), (view.state, view.language)
        # Flask serves only what the first visit's path leaves to it: a link that finds no mailbox.
        assert served_by_flask == (view.state == orders.LinkState.NOT_FOUND), view.state
        states.add((view.state, view.language))
        if fast.headers.get("Set-Cookie"):
            secret = _session_secret(app, fast)
            assert re.fullmatch(r"[0-9a-f]{40}", secret)
            token = csrf_token(fast.get_data(as_text=True))
            assert URLSafeTimedSerializer(list(settings.secret_keys), salt="wtf-csrf-token").loads(token) == secret
        public_https = settings.base_url.startswith("https://")
        assert ("Strict-Transport-Security" in fast.headers) == (scheme == "https" or public_https)
    every_state = {value for name, value in vars(orders.LinkState).items() if name.isupper()}
    assert {state for state, _ in states} == every_state
    assert {language for _, language in states} == {"it", "en"}


def test_the_token_and_the_cookie_of_a_first_visit_start_the_order(app_and_calls, runtime, session_factory):
    app, calls = app_and_calls
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        session.commit()
        path = link_path(runtime, mailbox)
    client = app.test_client()
    page = client.get(path)
    assert calls.count == 0 and page.status_code == 200
    assert "Set-Cookie" in page.headers and "Cookie" in page.headers["Vary"]
    assert client.post(path, data={}).status_code == 400  # no token: refused
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(RenewalOrder)) == 0
    response = client.post(path, data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 303 and "/ordine/" in response.headers["Location"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(RenewalOrder)) == 1
    # Another browser's token does not fit this one's session.
    other = app.test_client().get(path)
    fresh = app.test_client()
    fresh.get(path)
    assert fresh.post(path, data={"csrf_token": csrf_token(other.get_data(as_text=True))}).status_code == 400


def test_a_public_https_base_url_sends_hsts_and_a_secure_cookie_on_a_first_visit_too(settings, session_factory, clock):
    clock.today = TODAY
    rt = runtime_on_test_database(dataclasses.replace(settings, base_url="https://rinnovi.example.test"), session_factory, clock)
    try:
        app = create_app(rt)
        calls = ViewCalls(app)
        with session_factory() as session:
            mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
            session.commit()
            path = link_path(rt, mailbox)
        fast = app.test_client().get(path)  # over http: TLS ends at a proxy
        assert calls.count == 0
        assert fast.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "Secure" in fast.headers["Set-Cookie"]
        assert _comparable(app, fast) == _comparable(app, _flask_answer(app, path))
    finally:
        close_runtime(rt)


@pytest.mark.parametrize(
    "request_kind",
    [
        "HEAD", "POST", "a session cookie", "any cookie", "mounted below a path", "an account link", "a tampered token",
        "CSRF off", "trusted hosts",
    ],
)  # fmt: skip
def test_everything_but_a_first_get_of_a_mailbox_link_is_flasks(runtime, session_factory, clock, request_kind):
    clock.today = TODAY
    trusted_hosts = ["rinnovi.example.test"] if request_kind == "trusted hosts" else None
    app = create_app(runtime, WTF_CSRF_ENABLED=request_kind != "CSRF off", TRUSTED_HOSTS=trusted_hosts)
    calls = ViewCalls(app)
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        session.commit()
        path = link_path(runtime, mailbox)
        account_path = account_link_path(runtime, mailbox.account_id, mailbox.expires_on)
    client = app.test_client()
    if request_kind == "HEAD":
        client.head(path)
    elif request_kind == "POST":
        response = client.post(path, data={})
        # CSRFProtect's refusal, by Flask's hooks before any view: the first visit's path never answers a POST.
        assert response.status_code == 400 and "Modulo scaduto" in response.get_data(as_text=True)
        return
    elif request_kind == "a session cookie":
        client.get(path)  # the first visit: not Flask's
        assert calls.count == 0
        client.get(path)
    elif request_kind == "any cookie":
        client.set_cookie("other", "1")
        client.get(path)
    elif request_kind == "mounted below a path":
        response = client.get(path, base_url="http://localhost/rinnovi")
        assert "/rinnovi/static/style.css" in response.get_data(as_text=True)
    elif request_kind == "an account link":
        client.get(account_path)
    elif request_kind == "a tampered token":
        assert client.get(path[:-3] + "AAA").status_code == 404
    elif request_kind == "trusted hosts":
        assert client.get(path, base_url="http://rinnovi.example.test").status_code == 200  # Flask checked the Host
    else:
        response = client.get(path)
        assert response.status_code == 200 and "csrf_token" not in response.get_data(as_text=True)
    assert calls.count == 1


def test_a_failure_on_the_first_visits_path_is_served_by_flask(app_and_calls, runtime, session_factory, caplog, monkeypatch):
    app, calls = app_and_calls
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        session.commit()
        path = link_path(runtime, mailbox)
    middleware = app.wsgi_app
    assert isinstance(middleware, FirstVisitLinkPage)

    def broken(language):
        raise LookupError("no template")

    monkeypatch.setattr(middleware, "_template", broken)
    response = app.test_client().get(path)
    assert response.status_code == 200 and calls.count == 1  # Flask's page, whole
    assert "Rinnova" in response.get_data(as_text=True)
    messages = [record.getMessage() for record in caplog.records if record.name == "worker.web.link_page"]
    assert messages == ["first visit of a link page: LookupError; served by Flask instead"]
    assert not any(path.split("/")[-1] in message for message in messages)
