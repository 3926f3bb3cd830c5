"""``create_app``: the Flask app of the link handler, its settings, error pages and headers."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from itsdangerous import URLSafeTimedSerializer

from config.settings import Settings, warn_generated_secret_key
from worker.services.runtime import Runtime
from worker.store.db import DATABASE_UNAVAILABLE
from worker.web import (
    api,
    auto_renew,
    charge_authentication,
    errors,
    hosted_checkout,
    i18n,
    order_life,
    reminders,
    sandbox_challenge,
    templating,
    views,
    webhooks,
)
from worker.web.forms import kind_label
from worker.web.metrics import blueprint as metrics_blueprint
from worker.web.runtime import WebRuntime
from worker.web.security import (
    NO_STORE_HEADERS,
    SECURITY_HEADERS,
    STRICT_TRANSPORT_SECURITY,
    install_log_redaction,
    redact,
)

csrf = CSRFProtect()


class _App(Flask):
    #: Templates may also be asked for compiled for one language (worker.web.templating).
    jinja_environment = templating.Environment

    def create_global_jinja_loader(self):
        return templating.LocalisedLoader(super().create_global_jinja_loader())

    def log_exception(self, exc_info) -> None:
        # Flask's own line names the path: "Exception on /rinnova/<token> [GET]".
        self.logger.error("Exception on %s [%s]", redact(request.path), request.method, exc_info=exc_info)


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, its itsdangerous serializer built once per key set.

    Flask builds the serializer anew when it opens the session and again when it
    saves it, and itsdangerous tries the payload serializer on ``{}`` each time it
    is built: a sizeable share of a link page (bench/link_handler.sh).  The serializer
    holds nothing per request, so one per key set serves every thread.
    """

    def __init__(self) -> None:
        self._serializers: dict[tuple[str | bytes, ...], URLSafeTimedSerializer] = {}

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        keys = (*(app.config["SECRET_KEY_FALLBACKS"] or ()), app.secret_key)
        serializer = self._serializers.get(keys)
        if serializer is None:
            serializer = super().get_signing_serializer(app)
            if serializer is None:
                return None
            self._serializers[keys] = serializer
        return serializer


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
    # Named as the package: Flask's logger is "worker.web", whose lines are redacted.
    app = _App("worker.web", static_folder="static", template_folder="templates")
    _configure(app, settings)
    app.config.update(config)
    app.session_interface = _SessionInterface()
    app.extensions["pec_runtime"] = runtime
    app.url_map.merge_slashes = False  # no redirect built from a path the visitor typed
    app.jinja_env.autoescape = True  # every template, whatever its name
    app.jinja_env.globals.update(
        t=i18n.translate_in_context,
        language=i18n.language,
        plan_label=i18n.plan_label,
        static_url=templating.static_url,
        method_label=views.method_label,
        kind_label=kind_label,
        # The contract documents and the support page, as every page and email links them.
        terms_url=settings.terms_url,
        manual_url=settings.manual_url,
        support_url=settings.support_url,
        unfair_terms_clauses=settings.unfair_terms_clauses,
    )
    app.jinja_env.filters.update(long_date=i18n.long_date, date_art=i18n.date_with_article, euro=i18n.euro)
    csrf.init_app(app)
    # RFC 8058: the one-click unsubscribe POST carries no cookie and no CSRF token.  Exempt from
    # CSRFProtect is this one view only; its page's own buttons check their token in the view.
    csrf.exempt(reminders.reminders_page)

    app.register_blueprint(views.blueprint)
    app.register_blueprint(hosted_checkout.blueprint)  # card and PayPal on the gateway's page
    app.register_blueprint(webhooks.blueprint)  # POST /webhooks/<gateway>: signed by the gateway, no CSRF token
    csrf.exempt(webhooks.stripe_webhook)  # the gateway's signature authorises them, not a cookie
    csrf.exempt(webhooks.paypal_webhook)
    csrf.exempt(webhooks.sandbox_webhook)
    app.register_blueprint(charge_authentication.blueprint)  # /rinnovo-automatico/autenticazione/<token>
    app.register_blueprint(auto_renew.blueprint)  # /rinnovo-automatico/<token>
    app.register_blueprint(sandbox_challenge.blueprint)  # /sandbox/3ds/<id>: the sandbox's 3-D Secure page
    app.register_blueprint(reminders.blueprint)  # /avvisi/<token>: List-Unsubscribe
    app.register_blueprint(order_life.blueprint)  # change the method, cancel, start again
    app.register_blueprint(metrics_blueprint)  # GET /metrics, behind PEC_RENEWAL_METRICS_TOKEN
    app.register_blueprint(api.blueprint)  # POST /api/v1/renewal-links, behind PEC_RENEWAL_API_TOKEN
    csrf.exempt(api.renewal_links)  # a bearer token authorises it, not a cookie
    app.register_error_handler(CSRFError, errors.csrf_error)
    for code in (400, 403, 404, 405, 410, 413, 500):
        app.register_error_handler(code, errors.http_error)
    for unavailable in DATABASE_UNAVAILABLE:  # whatever the page: a 503 page, one log line
        app.register_error_handler(unavailable, errors.database_unavailable)
    _install_hooks(app, settings)
    return app


def _configure(app: Flask, settings: Settings) -> None:
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


def _install_hooks(app: Flask, settings: Settings) -> None:
    """The Origin check before a POST, and the security and cache headers after every answer."""
    base_origin = _origin(settings.base_url)
    # Public over https: a browser only ever reaches us that way (and ignores the header over http).
    public_https = settings.base_url.startswith("https://")

    @app.before_request
    def _check_origin():
        if request.method not in ("GET", "HEAD", "OPTIONS") and not reminders.is_one_click(request):
            # A browser posting from another site names it here ("null" under no-referrer).  A
            # one-click unsubscribe may come from any mail client: its signed URL is its authority.
            origin = request.headers.get("Origin")
            if origin and origin != "null" and origin not in (base_origin, _origin(request.host_url)):
                return errors.csrf_error(None)
        return None

    security_headers = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS.items())

    @app.after_request
    def _headers(response: Response) -> Response:
        # One pass over the headers the view set, then the missing ones added in one go.
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
        # Every page depends on the browser's session.  (response.vary parses the header on each access.)
        if "vary" not in present:
            missing.append(("Vary", "Cookie"))
        elif "cookie" not in {item.strip().lower() for item in headers.get("Vary", "").split(",")}:
            response.vary.add("Cookie")
        headers.extend(missing)
        return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
