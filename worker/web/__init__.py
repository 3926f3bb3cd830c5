"""The renewal link handler: a small Flask app that turns a click on Rinnova into an order.

``create_app(settings_or_runtime)`` is the factory; with no argument it reads
``Settings.from_env()``, so gunicorn can serve it as it is::

    gunicorn -c python:worker.web.gunicorn_conf 'worker.web:create_app()'

and ``pec-renewal serve`` runs Flask's development server.  The business
rules live in ``worker.services.orders`` and ``worker.services.payments``; this
package only shows pages, validates form input and calls the services.  Flask
serves every request; its signed-cookie session and Flask-WTF's CSRF tokens
(itsdangerous) do the signing.
"""

from __future__ import annotations

from worker.web.app import create_app
from worker.web.runtime import PING_AFTER_IDLE_SECONDS, POOL_SIZE, WebRuntime, runtime_of

__all__ = ["PING_AFTER_IDLE_SECONDS", "POOL_SIZE", "WebRuntime", "create_app", "runtime_of"]
