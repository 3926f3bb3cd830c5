"""A holder's first GET of a mailbox link page, answered in front of Flask.

Nearly every request the link handler serves is a holder opening the Rinnova
link of a notice: ``GET /rinnova/<token>`` from a browser with no session yet.
That request is answered here, a WSGI layer in front of Flask's own, with
Flask's answer: the same status, the same headers in the same order, the
same page and a session cookie and CSRF token that Flask and Flask-WTF read
back on the button's POST.  It does the page's work only: verify the token,
read the mailbox (:func:`worker.services.orders.read_mailbox_link`), sign a CSRF
token, render the template compiled for the holder's language.  Without
Flask's request machinery (request and session objects, routing, context
processors, the response object and its hooks) a page costs 320 instead of
540 µs of CPU in process, and 0.80-0.96 instead of 1.06-1.13 ms under
gunicorn (``bench/link_handler.sh``, ``bench/RESULTS.md``, stop 13).

Everything else goes to Flask, unchanged: another method or path, a request
with a ``Cookie`` header (the session may hold flashed messages, a CSRF
token to keep, orders), an application mounted below a path
(``SCRIPT_NAME``) or with ``TRUSTED_HOSTS`` or CSRF protection turned off,
an account link, a link that cannot be read or finds no mailbox, and any
error at all on the way (the request is then served by Flask from the
start, which reads again, logs and shows its error page).  Nothing here
writes: a GET reads one row.

``tests/web/test_first_visit_link_page.py`` compares each answer with
Flask's, state by state and language by language, and posts the token back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flask import Flask, g

from worker.services import orders
from worker.store.db import DATABASE_UNAVAILABLE
from worker.rules.links import MAILBOX, TokenInvalid
from worker.web import signing, templating
from worker.web.security import NO_STORE_HEADERS, SECURITY_HEADERS, STRICT_TRANSPORT_SECURITY

log = logging.getLogger(__name__)

PREFIX = "/rinnova/"
#: The link page's states that show the button (a POST, with its CSRF token); here and in views._link_page.
STATES_WITH_FORM = frozenset((orders.LinkState.RENEWABLE, orders.LinkState.AUTO_RENEW))


def status_code(state: str) -> int:
    """The link page's status: 410 for a deleted mailbox, else 200 (here and in views._link_page)."""
    return 410 if state == orders.LinkState.DELETED else 200


_STATUS_LINES = {200: "200 OK", 410: "410 GONE"}


def _no_flashed_messages() -> tuple:
    return ()  # a browser without a session has none


class FirstVisitLinkPage:
    """WSGI middleware, installed by ``create_app``: ``app.wsgi_app = FirstVisitLinkPage(app, app.wsgi_app, ...)``."""

    def __init__(self, app: Flask, flask_wsgi_app: Callable, *, public_https: bool) -> None:
        self.app = app
        self.public_https = public_https
        self.flask_wsgi_app = flask_wsgi_app
        self.runtime = app.extensions["pec_runtime"]
        self._templates: dict[str, object] = {}
        self._static_url: Callable[[str], str] | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or not path.startswith(PREFIX)
            or "HTTP_COOKIE" in environ
            or environ.get("SCRIPT_NAME")
            or not signing.csrf_enabled(self.app)
            or self.app.config["TRUSTED_HOSTS"]  # Flask checks the Host header against them
        ):
            return self.flask_wsgi_app(environ, start_response)
        try:
            answer = self._answer(path[len(PREFIX):], environ.get("wsgi.url_scheme") == "https")
        except DATABASE_UNAVAILABLE:
            answer = None  # Flask reads again, and logs the one line of its 503 page if the database is still away
        except Exception as error:  # noqa: BLE001 - Flask serves it from the start: it logs and shows its error page
            log.warning("first visit of a link page: %s; served by Flask instead", type(error).__name__)
            answer = None
        if answer is None:
            return self.flask_wsgi_app(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    def _answer(self, token: str, secure_request: bool) -> tuple[str, list[tuple[str, str]], bytes] | None:
        runtime = self.runtime
        try:
            link = runtime.signer.read_renewal_token(token)
        except TokenInvalid:
            return None
        if link.target != MAILBOX:
            return None
        view = orders.read_mailbox_link(runtime.engine, link, runtime.today())
        if view.state == orders.LinkState.NOT_FOUND:
            return None
        app = self.app
        cookie = form_token = None
        with app.app_context():
            if view.state in STATES_WITH_FORM:
                # signing.csrf_token's steps for a browser with no session: a new secret, kept in the
                # session (the cookie), and the form's signed copy of it.
                raw = signing.new_raw_csrf_token()
                form_token = signing.csrf_serializer(app).dumps(raw)
                interface = app.session_interface
                session = interface.session_class({app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"): raw})
                cookie = interface.set_cookie_value(app, session)
            g.language = view.language  # the filters' language (worker.web.i18n)
            body = self._template(view.language).render(
                view=view,
                states=orders.LinkState,
                form_token=form_token,
                account_link=False,
                get_flashed_messages=_no_flashed_messages,
                static_url=self._static_urls(),
            )
        body = body.encode()
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]
        headers += self._headers(secure_request)
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        return _STATUS_LINES[status_code(view.state)], headers, body

    def _template(self, language: str):
        template = self._templates.get(language)
        if template is None:
            template = self._templates[language] = self.app.jinja_env.get_template(templating.localised("link.html", language))
        return template

    def _static_urls(self) -> Callable[[str], str]:
        """``templating.static_url`` for an application at the root of its host (no ``SCRIPT_NAME``)."""
        if self._static_url is None:
            urls: dict[str, str] = {}
            app = self.app

            def static_url(filename: str) -> str:
                url = urls.get(filename)
                if url is None:  # Flask builds URLs inside a request: a dummy one, once per file
                    with app.test_request_context("/"):
                        url = urls[filename] = templating.static_url(filename)
                return url

            self._static_url = static_url
        return self._static_url

    def _headers(self, secure_request: bool) -> list[tuple[str, str]]:
        """The app's after-request headers (``create_app``'s ``_headers``), in its order, and ``Vary``."""
        headers = list(SECURITY_HEADERS.items())
        if secure_request or self.public_https:
            headers.append(("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY))
        headers += [*NO_STORE_HEADERS, ("Vary", "Cookie")]
        return headers
