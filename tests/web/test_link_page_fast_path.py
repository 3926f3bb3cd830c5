"""The link page's cheaper GET keeps every behaviour: the same reads, the same page, a real CSRF token.

bench/link_handler.sh measures ``GET /rinnova/<token>`` against a bare token
check.  To get closer, the page reads its row on a raw DBAPI cursor
(``worker.services.orders.read_mailbox_link``), renders a template compiled for the
holder's language (``worker.web.templating``), and signs the CSRF token and
the session cookie with itsdangerous' formats but less work
(``worker.web.signing``).  These tests pin each of those to what it replaced.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

import pytest
from flask import render_template
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import validate_csrf
from itsdangerous import Serializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from wtforms import ValidationError

from tests.factories import make_mailbox
from tests.web.conftest import csrf_token, link_path
from worker.store import migrate
from worker.services import orders
from worker.store.db import make_engine, make_session_factory
from worker.rules.links import MAILBOX, RenewalLink
from worker.store.models import OrderStatus
from worker.services.orders import LinkState
from worker.web import create_app, signing, templating

TODAY = date(2027, 3, 1)
NOW = datetime(2027, 3, 1, 9, 30, tzinfo=timezone.utc)
EXPIRES = date(2027, 4, 30)


def _link(mailbox, expires_on=None) -> RenewalLink:
    return RenewalLink(MAILBOX, mailbox.id, expires_on or mailbox.expires_on)


def _every_state(session_factory, settings) -> list[RenewalLink]:
    """Mailbox links in every state the page knows, with a hostile holder name and orders to resume."""
    with session_factory() as session:
        plain = make_mailbox(session, expires_on=EXPIRES, plan="pro", holder_name='Anna <script>alert("x")</script> & C.')
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
        orders.create_unpaid_renewal_order(session, unpaid, 1, NOW, TODAY, settings=settings)
        session.commit()
        return [
            _link(plain), _link(auto), _link(on_domain), _link(renewed, date(2027, 4, 30)), _link(deleted),
            _link(expired), _link(ordered), _link(cancelled), _link(unpaid),
            _link(plain, date(2027, 5, 31)),  # a cycle it never had
            RenewalLink(MAILBOX, 999999, EXPIRES),
        ]  # fmt: skip


# -- The read ------------------------------------------------------------------------------------------


def test_the_raw_read_gives_what_describe_link_gives_in_every_state(session_factory, settings):
    links = _every_state(session_factory, settings)
    engine = session_factory.kw["bind"]
    states = set()
    for link in links:
        with session_factory() as session:
            expected = orders.describe_link(session, link, TODAY)
        view = orders.read_mailbox_link(engine, link, TODAY)
        assert view == expected, link
        # Binary results: the same Python types, not only equal values (True == 1, a date is no str).
        for got, want in zip(view.mailboxes, expected.mailboxes):
            assert [type(value) for value in vars(got).values()] == [type(value) for value in vars(want).values()]
        assert type(view.holder_name) is type(expected.holder_name)
        states.add(expected.state)
    assert states == {
        LinkState.RENEWABLE, LinkState.AUTO_RENEW, LinkState.ON_DOMAIN,
        LinkState.ALREADY_RENEWED, LinkState.DELETED, LinkState.NOT_FOUND,
    }  # fmt: skip
    with engine.connect() as connection:  # nothing was left in autocommit or in a transaction
        assert connection.connection.dbapi_connection.autocommit is False


def test_the_raw_read_works_on_sqlite_the_embedded_default(tmp_path, settings):
    url = f"sqlite:///{tmp_path / 'renewal.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        links = _every_state(factory, settings)
        for link in links:
            with factory() as session:
                expected = orders.describe_link(session, link, TODAY)
            view = orders.read_mailbox_link(engine, link, TODAY)
            assert view == expected, link
            if view.mailboxes:  # SQLite keeps dates as text and booleans as integers: converted back
                assert isinstance(view.mailboxes[0].expires_on, date) and isinstance(view.mailboxes[0].auto_renew, bool)
    finally:
        engine.dispose()


def test_an_account_link_is_not_read_by_the_raw_read(session_factory):
    with pytest.raises(ValueError):
        orders.read_mailbox_link(session_factory.kw["bind"], RenewalLink("a", 1, EXPIRES), TODAY)


# -- The page ------------------------------------------------------------------------------------------


def _views(session_factory, settings):
    engine = session_factory.kw["bind"]
    return [orders.read_mailbox_link(engine, link, TODAY) for link in _every_state(session_factory, settings)]


@pytest.mark.parametrize("account_link", [False, True])
def test_the_language_compiled_link_page_is_the_page_t_writes(app, session_factory, settings, account_link):
    views = [view for view in _views(session_factory, settings) if view.state != LinkState.NOT_FOUND]
    assert {view.language for view in views} == {"it", "en"}
    for view in views:
        for language in ("it", "en"):
            with app.test_request_context("/"):
                from worker.web import i18n

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


def test_the_stylesheet_url_is_flasks(app):
    with app.test_request_context("/", base_url="https://rinnovi.example.test/rinnovi"):
        from flask import url_for

        assert templating.static_url("style.css") == url_for("static", filename="style.css") == "/rinnovi/static/style.css"
    with app.test_request_context("/"):
        assert templating.static_url("style.css") == "/static/style.css"


# -- The CSRF token and the session cookie -----------------------------------------------------------------


@pytest.fixture
def mailbox_path(runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        return link_path(runtime, mailbox)


def _session(app, response):
    cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    return SecureCookieSessionInterface().get_signing_serializer(app).loads(cookie)  # Flask's own reader


def test_the_link_page_carries_a_flask_wtf_token_that_every_post_checks(app, client, mailbox_path):
    response = client.get(mailbox_path)
    token = csrf_token(response.get_data(as_text=True))
    raw = _session(app, response)["csrf_token"]
    assert re.fullmatch(r"[0-9a-f]{40}", raw)
    # Flask-WTF's format: the raw token, signed with SECRET_KEY and Flask-WTF's salt.
    assert URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token").loads(token) == raw
    with app.test_request_context("/"):
        from flask import session

        session["csrf_token"] = raw
        validate_csrf(token)  # what CSRFProtect runs on every POST
        with pytest.raises(ValidationError):
            validate_csrf(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
        session["csrf_token"] = "0" * 40
        with pytest.raises(ValidationError):
            validate_csrf(token)  # another browser's session
    assert client.post(mailbox_path, data={}).status_code == 400
    assert client.post(mailbox_path, data={"csrf_token": token}).status_code == 303


def test_a_returning_browser_keeps_its_token_and_gets_no_new_cookie(app, client, mailbox_path):
    first = client.get(mailbox_path)
    raw = _session(app, first)["csrf_token"]
    second = client.get(mailbox_path)
    assert "Set-Cookie" not in second.headers  # the session it sent already holds the token
    assert "Cookie" in second.headers["Vary"]
    token = csrf_token(second.get_data(as_text=True))
    assert URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token").loads(token) == raw


def test_no_token_and_no_cookie_where_the_page_has_no_button(app, client, runtime, session_factory):
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


def test_the_fast_serializer_writes_what_itsdangerous_reads_and_reads_what_it_writes(app):
    for salt, key_derivation in (("wtf-csrf-token", "django-concat"), ("cookie-session", "hmac")):
        keys = ["an-old-key-0123456789abcdef0123456789", "the-new-key-0123456789abcdef012345678"]
        kwargs = {"salt": salt, "signer_kwargs": {"key_derivation": key_derivation}}
        fast = signing.FastURLSafeTimedSerializer(keys, **kwargs)
        stock = URLSafeTimedSerializer(keys, **kwargs)
        for value in ("a" * 40, "é\"<\u2028", {"csrf_token": "0123456789abcdef0123456789abcdef01234567"}, ["x", 1]):
            assert fast.dump_payload(value) == base64_encode(Serializer.dump_payload(stock, value))  # itsdangerous' JSON
            assert stock.loads(fast.dumps(value), max_age=60) == value
            assert fast.loads(stock.dumps(value), max_age=60) == value  # compressed or not
            assert not fast.dumps(value).startswith(".")
        older = URLSafeTimedSerializer(keys[:1], **kwargs).dumps("signed-with-the-old-key")
        assert fast.loads(older) == "signed-with-the-old-key"
        with pytest.raises(Exception):
            fast.loads(URLSafeTimedSerializer(["another-key-0123456789abcdef012345"], **kwargs).dumps("x"))


def test_the_session_json_is_flasks_byte_for_byte(app):
    ours = app.session_interface.serializer
    flasks = TaggedJSONSerializer()
    sessions = [
        {"csrf_token": "0123456789abcdef0123456789abcdef01234567"},
        {"b": "x", "a": "è ü \u2028 <>&'\""},
        {" t": "looks like a tag"},
        {"orders": ["abc", "def"], "csrf_token": "x"},
        {"_flashes": [("message", "ok")]},
        {},
    ]
    with app.app_context():
        for value in sessions:
            assert ours.dumps(value) == flasks.dumps(value), value
            assert ours.loads(ours.dumps(value)) == flasks.loads(flasks.dumps(value))
    for value in sessions:  # outside an app, Flask's own code
        assert ours.dumps(value) == flasks.dumps(value), value
