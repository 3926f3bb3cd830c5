"""The baseline of ``bench/link_handler.sh``: a bare Flask route that verifies the same renewal token.

Same serializer, salt, keys and maximum age as :class:`worker.links.LinkSigner`
(``PEC_RENEWAL_SECRET_KEYS``, ``PEC_RENEWAL_LINK_MAX_AGE_DAYS``), and nothing
else: no database, no template, no session, no CSRF token.  Served by gunicorn
with the link handler's own settings::

    gunicorn -c python:worker.web.gunicorn_conf --pythonpath bench 'link_handler_baseline:create_app()'
"""

from __future__ import annotations

from flask import Flask, abort
from itsdangerous import BadData, URLSafeTimedSerializer

from config.settings import Settings
from worker.links import RENEWAL_SALT


def create_app() -> Flask:
    settings = Settings.from_env()
    serializer = URLSafeTimedSerializer(list(settings.secret_keys), salt=RENEWAL_SALT)
    max_age = settings.link_max_age_days * 86400
    app = Flask(__name__)

    @app.get("/rinnova/<path:token>")
    def renewal_link(token: str):
        try:
            target, target_id, expires_on = serializer.loads(token, max_age=max_age)
        except (BadData, ValueError, TypeError):
            abort(404)
        return f"{target} {target_id} {expires_on}\n"

    return app
