"""The baselines of ``bench/link_handler.sh``: a bare Flask route that verifies the same renewal token.

Same serializer, salt, keys and maximum age as :class:`worker.rules.links.LinkSigner`
(``PEC_RENEWAL_SECRET_KEYS``, ``PEC_RENEWAL_LINK_MAX_AGE_DAYS``), and nothing
else: no database, no template, no session, no CSRF token.  Served by gunicorn
with the link handler's own settings::

    gunicorn -c python:worker.web.gunicorn_conf --pythonpath bench 'link_handler_baseline:create_app()'

``create_app(read=True)`` is **the read floor**: the same route, then the link
page's own read of the mailbox (:func:`worker.services.orders.read_mailbox_link`, on an
engine built as the link handler builds it, ``worker.web.WebRuntime``), and a
one-line answer.  No page, no session, no CSRF token: what any page showing the
mailbox's current state must at least do.  The link page's target is stated
against it: at least 0.55 of the read floor's requests per second
(``app_to_read_floor``).
"""

from __future__ import annotations

from datetime import date

from flask import Flask, abort
from itsdangerous import BadData, URLSafeTimedSerializer

from config.settings import Settings
from worker.rules.links import RENEWAL_SALT, RenewalLink
from worker.services import orders
from worker.web import WebRuntime


def create_app(read: bool = False) -> Flask:
    settings = Settings.from_env()
    serializer = URLSafeTimedSerializer(list(settings.secret_keys), salt=RENEWAL_SALT)
    max_age = settings.link_max_age_days * 86400
    runtime = WebRuntime(settings) if read else None  # its engine is made in each worker, on the first read
    app = Flask(__name__)

    @app.get("/rinnova/<path:token>")
    def renewal_link(token: str):
        try:
            target, target_id, expires_on = serializer.loads(token, max_age=max_age)
        except (BadData, ValueError, TypeError):
            abort(404)
        if runtime is None:
            return f"{target} {target_id} {expires_on}\n"
        link = RenewalLink(target, target_id, date.fromisoformat(expires_on))
        view = orders.read_mailbox_link(runtime.engine, link, runtime.today())
        return f"{target} {target_id} {expires_on} {view.state}\n"

    return app
