"""Security headers on every answer: pages, redirects, error pages (400, 404, 405, 410, 413, 500) and
static files; HSTS over https; no-store wherever a token or an order is shown; secure cookies."""

from __future__ import annotations

from datetime import date

import pytest

from tests.support.factories import make_mailbox
from tests.support.link_handler import link_path
from tests.support.web_flow import post_form, start
from worker.web import templating

CSP_DIRECTIVES = {
    "default-src": "'none'",
    "style-src": "'self'",
    "img-src": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
}
HSTS = "max-age=31536000; includeSubDomains"


def assert_headers(response, what, *, https: bool, no_store: bool = True) -> None:
    headers = response.headers
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("Referrer-Policy") == "no-referrer", what  # the path of a link page carries its token
    assert headers.get("X-Frame-Options") == "DENY", what
    csp = dict(
        (directive.split(" ", 1) + [""])[:2]
        for directive in (part.strip() for part in headers["Content-Security-Policy"].split(";"))
        if directive
    )
    assert csp == CSP_DIRECTIVES, (what, csp)  # no script at all, no inline style, no framing
    if https:
        assert headers.get("Strict-Transport-Security") == HSTS, what
    else:
        assert "Strict-Transport-Security" not in headers, what
    if no_store:
        assert headers.get("Cache-Control") == "no-store", (what, headers.get("Cache-Control"))


@pytest.fixture
def pages(app, client, runtime, session_factory, clock):
    """One request of every kind the link handler answers, with its expected status."""
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10), plan="pro")
        deleted = make_mailbox(session, expires_on=date(2026, 9, 1))
        session.commit()
        mailbox_id, link, deleted_link = mailbox.id, link_path(runtime, mailbox), link_path(runtime, deleted)
    order = start(client, link)

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    return {
        "home": (lambda: client.get("/"), 200),
        "link page": (lambda: client.get(link), 200),
        "link page, HEAD": (lambda: client.head(link), 200),
        "deleted mailbox (410)": (lambda: client.get(deleted_link), 410),
        "order step": (lambda: client.get(f"{order}/caselle"), 200),
        "redirect to the next step": (lambda: client.get(f"{order}/conferma"), 303),
        "POST, redirect": (lambda: post_form(client, f"{order}/caselle", {f"plan-{mailbox_id}": "pro"}), 303),
        "form with errors (422)": (lambda: post_form(client, f"{order}/caselle", {f"plan-{mailbox_id}": "gold"}), 422),
        "bad link (404)": (lambda: client.get("/rinnova/garbage"), 404),
        "unknown page (404)": (lambda: client.get("/nope"), 404),
        "favicon (404)": (lambda: client.get("/favicon.ico"), 404),
        "metrics with no PEC_RENEWAL_METRICS_TOKEN (404)": (lambda: client.get("/metrics"), 404),
        "order of another session (404)": (lambda: client.get("/ordine/abcdefghijkl"), 404),
        "method not allowed (405)": (lambda: client.delete(link), 405),
        "PUT on the home page (405)": (lambda: client.put("/"), 405),
        "OPTIONS": (lambda: client.options(link), 200),
        "missing CSRF token (400)": (lambda: client.post(link, data={}), 400),
        "malformed form body (400)": (
            lambda: client.post(link, data=b"\xff\xfe", content_type="multipart/form-data; boundary=x"),
            400,
        ),
        "too large (413)": (lambda: client.post(link, data={"x": "a" * 100_000}), 413),
        "server error (500)": (lambda: _server_error(app, client, link), 500),
    }


def _server_error(app, client, link):
    original = templating.localised
    app.config["PROPAGATE_EXCEPTIONS"] = False
    templating.localised = None  # the link page fails after reading its link: calling None raises TypeError
    try:
        return client.get(link)
    finally:
        templating.localised = original


def test_every_answer_has_the_security_headers_over_https(pages):
    for what, (request, status) in pages.items():
        response = request()
        assert response.status_code == status, (what, response.status_code)
        assert_headers(response, what, https=True)
        if response.mimetype == "text/html" and response.status_code != 303:
            html = response.get_data(as_text=True)
            assert "<script" not in html and " style=" not in html, what  # nothing the CSP would block


def test_error_pages_are_in_clear_italian(pages):
    expected = {
        "bad link (404)": "Link non valido o scaduto",
        "unknown page (404)": "Pagina non trovata",
        "method not allowed (405)": "Operazione non consentita",
        "missing CSRF token (400)": "Modulo scaduto",
        "malformed form body (400)": "Modulo scaduto",  # the form could not be read: reload and retry
        "too large (413)": "Dati troppo lunghi",
        "server error (500)": "Errore temporaneo",
    }
    for what, heading in expected.items():
        response = pages[what][0]()
        assert heading in response.get_data(as_text=True), what
        assert response.mimetype == "text/html", what


def test_static_files_have_the_headers_and_may_be_cached(client):
    response = client.get("/static/style.css")
    assert response.status_code == 200 and response.mimetype == "text/css"
    assert_headers(response, "static", https=True, no_store=False)
    assert "no-store" not in response.headers.get("Cache-Control", "")  # the stylesheet holds no secret
    for path in ("/static/nope.css", "/static/../__init__.py", "/static/%2e%2e/__init__.py"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert_headers(response, path, https=True)


def test_over_plain_http_there_is_no_hsts_and_over_https_there_is(make_app):
    app = make_app(base_url="http://127.0.0.1:5000")  # a developer's machine
    client = app.test_client()
    for path in ("/", "/rinnova/garbage", "/static/style.css"):
        assert_headers(client.get(path), path, https=False, no_store=not path.startswith("/static/"))
        # Served over https (TLS ended by gunicorn, or a proxy gunicorn trusts): HSTS.
        response = client.get(path, base_url="https://127.0.0.1:5000")
        assert_headers(response, path, https=True, no_store=not path.startswith("/static/"))


def test_token_pages_are_never_stored_and_the_session_cookie_is_locked_down(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        link = link_path(runtime, mailbox)
    response = client.get(link)
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    assert "Cookie" in response.headers.get("Vary", "")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("pec_rinnovo=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie, attribute
    # The page loads nothing from elsewhere, so the token cannot leak through a Referer anyway.
    html = response.get_data(as_text=True)
    assert '<meta name="referrer" content="no-referrer">' in html
    # Its only other addresses are the contract and support pages the holder may follow, sent no Referer.
    followed = (runtime.settings.terms_url, runtime.settings.manual_url, runtime.settings.support_url)
    rest = html.replace(runtime.settings.base_url, "")
    for url in followed:
        assert f'href="{url}" rel="noopener noreferrer"' in html
        rest = rest.replace(url, "")
    assert "http://" not in rest and "https://" not in rest
