"""No open redirect: whatever a visitor puts in the path, the query, the form or the Host header,
every Location the app answers with stays on our origin.

The app takes no "next" or "return" URL: each redirect is built with ``url_for``.  The tests try the
known bypasses anyway, on every route, so a redirect added later that reads one is caught, and a
structural test checks that every ``redirect()`` in the views is given a ``url_for()``.
"""

from __future__ import annotations

import ast
import inspect
import re
from datetime import date
from urllib.parse import quote, urljoin, urlsplit

import pytest

from tests.support.factories import make_mailbox
from tests.support.link_handler import csrf_token, link_path
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start
from worker.web import views

BASE_URL = "https://rinnovi.example.test"  # the tests' PEC_RENEWAL_BASE_URL
BYPASSES = [
    "//evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/%09/evil.example",
    "https:evil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "https://evil.example",
    "//evil.example/%2e%2e",
    "/\t/evil.example",
    "///evil.example",
    "https://rinnovi.example.test@evil.example",
    "javascript:alert(1)",
]
NEXT_PARAMETERS = ("next", "return", "return_to", "returnTo", "redirect", "redirect_to", "url", "continue", "back")


def browser_target(location: str) -> str:
    """Where a browser goes for ``location``: it drops tabs and newlines and reads ``\\`` as ``/``."""
    cleaned = re.sub(r"[\t\r\n]", "", location).replace("\\", "/")
    return urljoin(BASE_URL + "/ordine/x/caselle", cleaned)


def assert_stays_on_our_origin(response, what) -> None:
    location = response.headers.get("Location")
    if location is None:
        return
    assert not re.search(r"[\t\r\n\\]", location), (what, location)
    assert not location.startswith("//"), (what, location)
    target = urlsplit(browser_target(location))
    assert (target.scheme, target.netloc) == ("https", "rinnovi.example.test"), (what, location)
    assert "evil" not in location, (what, location)


@pytest.fixture
def order(client, runtime, session_factory):
    """A draft order in this browser session, at the holder step, and its link."""
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10), plan="pro")
        session.commit()
        mailbox_id, link = mailbox.id, link_path(runtime, mailbox)
    order = start(client, link)
    assert post_form(client, f"{order}/caselle", {f"plan-{mailbox_id}": "pro"}).status_code == 303
    return order, link, mailbox_id


def test_a_redirect_is_always_built_with_url_for():
    tree = ast.parse(inspect.getsource(views))
    calls = [
        node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "redirect"
    ]
    assert calls  # the views do redirect (POST, redirect, GET)
    for call in calls:
        target = call.args[0]
        assert isinstance(target, ast.Call) and getattr(target.func, "id", None) == "url_for", ast.unparse(call)
        # ...and never with a value of the visitor's: only endpoint names and ids the view checked.
        assert "request" not in ast.unparse(target), ast.unparse(call)


@pytest.mark.parametrize("bypass", BYPASSES)
def test_a_bypass_as_the_path_is_a_404_never_a_redirect(client, bypass):
    for path in (
        bypass,
        quote(bypass, safe="/:%"),
        "/" + bypass,
        "/rinnova/" + bypass,
        "/ordine/" + bypass,
        "/static/" + bypass,
    ):
        # As a server passes the raw path on (the test client would normalise some of these).
        response = client.get("/", environ_overrides={"PATH_INFO": path, "RAW_URI": path, "REQUEST_URI": path})
        assert response.status_code == 404, (path, response.status_code)
        assert_stays_on_our_origin(response, path)


@pytest.mark.parametrize("bypass", BYPASSES)
def test_a_bypass_as_a_next_parameter_is_ignored_everywhere(client, order, bypass):
    order_path, link, mailbox_id = order
    query = "&".join(f"{name}={quote(bypass, safe='')}" for name in NEXT_PARAMETERS)
    gets = [
        "/",
        link,
        order_path,
        f"{order_path}/caselle",
        f"{order_path}/intestatario",
        f"{order_path}/modulo",
        f"{order_path}/conferma",
        "/static/style.css",
    ]
    for path in gets:
        response = client.get(f"{path}?{query}")
        assert_stays_on_our_origin(response, path)
    token = csrf_token(client.get(f"{order_path}/intestatario").get_data(as_text=True))
    fields = {name: bypass for name in NEXT_PARAMETERS}
    posts = {
        link: {},
        f"{order_path}/caselle": {f"plan-{mailbox_id}": "pro"},
        f"{order_path}/intestatario": PRIVATE_HOLDER,
        f"{order_path}/modulo": {"method": "bank_transfer", "years": "1"},
    }
    for path, data in posts.items():
        response = client.post(f"{path}?{query}", data=dict(data, csrf_token=token, **fields))
        assert response.status_code == 303, (path, response.status_code)  # the step worked...
        assert_stays_on_our_origin(response, path)  # ...and went where the app says, not where we asked


def test_a_forged_host_header_does_not_move_a_redirect_off_our_origin(app, client, order):
    order_path, link, mailbox_id = order
    cookie = client.get_cookie("pec_rinnovo").value  # the browser session, sent to whatever host
    raw = app.test_client(use_cookies=False)
    for host in ("evil.example", "rinnovi.example.test@evil.example", "evil.example:443"):
        response = raw.get(f"{order_path}/conferma", headers={"Host": host, "Cookie": f"pec_rinnovo={cookie}"})
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/ordine/")  # a path: the browser stays where it is
        assert_stays_on_our_origin(response, host)


def test_the_oracle_catches_each_bypass():
    """The origin check itself: each bypass, as a Location, would be caught."""
    from types import SimpleNamespace

    for bypass in BYPASSES:
        with pytest.raises(AssertionError):
            assert_stays_on_our_origin(SimpleNamespace(headers={"Location": bypass}), bypass)
    assert_stays_on_our_origin(SimpleNamespace(headers={"Location": "/ordine/abc/caselle"}), "ours")
    assert_stays_on_our_origin(SimpleNamespace(headers={"Location": f"{BASE_URL}/ordine/abc"}), "ours")
