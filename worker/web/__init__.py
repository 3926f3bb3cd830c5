"""The renewal link handler: a small Flask app that turns a click on Rinnova into an order.

``create_app(settings_or_runtime)`` is the factory; with no argument it reads
``Settings.from_env()``, so gunicorn can serve it as it is::

    gunicorn -c python:worker.web.gunicorn_conf 'worker.web:create_app()'

and ``pec-renewal serve`` runs Flask's development server.  The business
rules live in ``worker.services.orders``; this package only shows pages, validates
form input and calls the service.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cached_property
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Engine
from werkzeug.http import dump_cookie

from config.settings import Settings, warn_generated_secret_key
from worker.store.db import DATABASE_UNAVAILABLE, make_engine
from worker.services.runtime import Runtime
from worker.web import i18n, templating
from worker.web.link_page import FirstVisitLinkPage
from worker.web.security import (
    NO_STORE_HEADERS,
    SECURITY_HEADERS,
    STRICT_TRANSPORT_SECURITY,
    install_log_redaction,
    redact,
)
from worker.web.signing import FastURLSafeTimedSerializer, SessionJSONSerializer, add_vary_cookie

log = logging.getLogger(__name__)

csrf = CSRFProtect()


class _App(Flask):
    #: Templates may also be asked for compiled for one language (worker.web.templating).
    jinja_environment = templating.Environment

    def create_global_jinja_loader(self):
        return templating.LocalisedLoader(super().create_global_jinja_loader())

    def log_exception(self, exc_info) -> None:
        # Flask's own line names the path: "Exception on /rinnova/<token> [GET]".
        self.logger.error("Exception on %s [%s]", redact(request.path), request.method, exc_info=exc_info)


#: A pooled connection idle longer than this is pinged before use (worker.store.db.make_engine).
PING_AFTER_IDLE_SECONDS = 10.0
#: Connections each web process keeps open between requests.  The pool opens one only when a
#: thread needs it, so this is a ceiling: at most gunicorn's threads (8) are ever open at once.
#: SQLAlchemy's default of 5 closed and reopened the extra threads' connections on every request.
POOL_SIZE = 16


class WebRuntime(Runtime):
    """The link handler's runtime: a pool as large as its threads, pinged only after sitting idle.

    A ping on every checkout was one of the few round trips of a link page.
    Under load a connection comes back to the pool and goes out again within
    milliseconds; one that sat idle (a quiet night, a server restart) is still
    checked first.  The CLI and the Celery workers keep the ping on every checkout.
    """

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url, ping_after_idle=PING_AFTER_IDLE_SECONDS, pool_size=POOL_SIZE)


def create_app(settings_or_runtime: Settings | Runtime | None = None, **config) -> Flask:
    """The Flask app for ``settings_or_runtime`` (default: ``Settings.from_env()``).

    Tests pass a :class:`Runtime` whose session factory points at the test
    database and whose clock they control.  ``config`` overrides Flask
    settings (such as ``WTF_CSRF_ENABLED=False``).
    """
    if settings_or_runtime is None:
        settings_or_runtime = Settings.from_env()
    runtime = settings_or_runtime if isinstance(settings_or_runtime, Runtime) else WebRuntime(settings_or_runtime)
    settings = runtime.settings

    install_log_redaction()
    warn_generated_secret_key(settings)  # the app signs its session cookies and forms with it
    app = _App(__name__, static_folder="static", template_folder="templates")
    keys = list(settings.secret_keys)
    app.config.update(
        SECRET_KEY=keys[-1],  # the newest signs; the others still verify
        SECRET_KEY_FALLBACKS=keys[:-1],
        # The same for the forms' CSRF tokens: itsdangerous signs with the last key of a list and
        # verifies with any (Flask-WTF passes this to it as it is), so a page opened before a
        # key was added can still be posted after.
        WTF_CSRF_SECRET_KEY=tuple(keys),
        SESSION_COOKIE_NAME="pec_rinnovo",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=12 * 3600,
        # The strict check wants a Referer, which no-referrer never sends: the
        # token and a SameSite cookie do the job, with the Origin check below.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=64 * 1024,
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        MAX_FORM_PARTS=200,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.config.update(config)
    app.session_interface = _SessionInterface()
    app.extensions["pec_runtime"] = runtime
    app.url_map.merge_slashes = False  # no redirect built from a path the visitor typed
    app.jinja_env.autoescape = True  # every template, whatever its name
    app.jinja_env.globals.update(
        t=i18n.translate_in_context, language=i18n.language, plan_label=i18n.plan_label, static_url=templating.static_url
    )
    app.jinja_env.filters.update(long_date=i18n.long_date, date_art=i18n.date_with_article, euro=i18n.euro)
    csrf.init_app(app)

    from worker.web import views
    from worker.web.metrics import blueprint as metrics_blueprint

    app.register_blueprint(views.blueprint)
    app.register_blueprint(metrics_blueprint)  # GET /metrics, behind PEC_RENEWAL_METRICS_TOKEN
    app.jinja_env.globals.update(method_label=views.method_label, kind_label=_kind_label())
    app.register_error_handler(CSRFError, views.csrf_error)
    for code in (400, 403, 404, 405, 410, 413, 500):
        app.register_error_handler(code, views.http_error)
    for unavailable in DATABASE_UNAVAILABLE:  # whatever the page: a 503 page, one log line
        app.register_error_handler(unavailable, views.database_unavailable)

    base_origin = _origin(settings.base_url)
    # Public over https: a browser only ever reaches us that way (and ignores the header over http).
    public_https = settings.base_url.startswith("https://")

    @app.before_request
    def _check_origin():
        # The page's language is the holder's, or the browser's when first asked (i18n.language).
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # A browser posting from another site names it here ("null" under no-referrer).
            origin = request.headers.get("Origin")
            if origin and origin != "null" and origin not in (base_origin, _origin(request.host_url)):
                from worker.web.views import csrf_error

                return csrf_error(None)
        return None

    security_headers = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS.items())

    @app.after_request
    def _headers(response: Response) -> Response:
        # One pass over the headers the view set, then the missing ones added in one go: werkzeug
        # looks a missing header up by raising and catching an exception, and parses Vary again
        # on every access (bench/link_handler.sh).
        headers = response.headers
        present = {name.lower() for name, _ in headers}
        missing = [(name, value) for lower, name, value in security_headers if lower not in present]
        if (public_https or request.is_secure) and "strict-transport-security" not in present:
            missing.append(("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY))
        if request.endpoint != "static" or response.status_code not in (200, 304):  # only a stylesheet is cached
            for name, value in NO_STORE_HEADERS:
                if name.lower() in present:
                    headers[name] = value
                else:
                    missing.append((name, value))
        headers.extend(missing)
        add_vary_cookie(response)
        return response

    # A holder's first GET of a mailbox link page is answered in front of Flask, with Flask's answer.
    app.wsgi_app = FirstVisitLinkPage(app, app.wsgi_app, public_https=public_https)
    return app


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, with its serializer built once per key set, not twice a request.

    The serializer (:class:`worker.web.signing.FastURLSafeTimedSerializer`) writes
    the cookie Flask would write, minus the zlib attempt, and keeps its signer
    and derived keys: a new visitor's cookie is signed without deriving the key
    again (bench/link_handler.sh).  Older compressed cookies are still read.
    """

    serializer = SessionJSONSerializer()

    def __init__(self) -> None:
        self._serializers: dict[tuple, URLSafeTimedSerializer] = {}

    def save_session(self, app: Flask, session, response: Response) -> None:
        if not session or not self.should_set_cookie(app, session):
            super().save_session(app, session, response)  # nothing to write, or a cookie to delete
            return
        # Flask's steps for a session to write, with "Vary: Cookie" added once, not parsed twice.
        response.headers.add("Set-Cookie", self.set_cookie_value(app, session))
        add_vary_cookie(response)

    def set_cookie_value(self, app: Flask, session) -> str:
        """The ``Set-Cookie`` value that writes ``session`` (what ``Response.set_cookie`` would make of it)."""
        return dump_cookie(
            self.get_cookie_name(app),
            self.get_signing_serializer(app).dumps(dict(session)),
            expires=self.get_expiration_time(app, session),
            path=self.get_cookie_path(app),
            domain=self.get_cookie_domain(app),
            secure=self.get_cookie_secure(app),
            httponly=self.get_cookie_httponly(app),
            max_size=app.config["MAX_COOKIE_SIZE"],  # flask.Response.max_cookie_size
            samesite=self.get_cookie_samesite(app),
            partitioned=self.get_cookie_partitioned(app),
        )

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        keys = (*app.config["SECRET_KEY_FALLBACKS"], app.secret_key)  # the current key last, as Flask does
        serializer = self._serializers.get(keys)
        if serializer is None:
            serializer = self._serializers[keys] = FastURLSafeTimedSerializer(
                list(keys),
                salt=self.salt,
                serializer=self.serializer,
                signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
            )
        return serializer


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _kind_label():
    from worker.web.forms import kind_label

    return kind_label


def runtime_of(app: Flask) -> Runtime:
    return app.extensions["pec_runtime"]
