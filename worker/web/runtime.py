"""The link handler's runtime: the engine it reads with, and how a view finds it."""

from __future__ import annotations

from functools import cached_property

from flask import Flask
from sqlalchemy import Engine

from worker.services.runtime import Runtime
from worker.store.db import make_engine

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


def runtime_of(app: Flask) -> Runtime:
    """The runtime ``create_app`` gave ``app``."""
    return app.extensions["pec_runtime"]
