"""The Celery application: ``celery -A worker.celery_app worker`` (and ``beat``).

It is built from the environment's settings when this module is imported; a bad setting
stops the process with one line naming the variable.  The factory and the signal handlers
are in :mod:`worker.celery_setup`.
"""

from __future__ import annotations

import sys

from config.settings import Settings, SettingsError
from worker.celery_setup import create_celery

try:
    app = create_celery(Settings.from_env())
except SettingsError as error:
    sys.exit(f"pec-renewal: {error}")
