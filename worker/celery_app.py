"""The Celery application: ``celery -A worker.celery_app worker`` (and ``beat``).

It is built from the environment's settings; a bad setting stops the process
with one line naming the variable.
"""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import worker_process_init

from config.celery import celery_config
from config.settings import Settings, SettingsError


def create_celery(settings: Settings) -> Celery:
    app = Celery("pec_renewal", include=["tasks.daily", "tasks.mail", "tasks.charges"])
    app.conf.update(celery_config(settings))
    return app


@worker_process_init.connect
def _freeze_startup_objects(**_kwargs) -> None:
    from worker.runtime import freeze_startup_objects

    freeze_startup_objects()


try:
    app = create_celery(Settings.from_env())
except SettingsError as error:
    sys.exit(f"pec-renewal: {error}")
