"""The Celery application's factory and signal handlers (``worker.celery_app`` builds the app).

The signals below configure logging
(``worker.logs``: JSON or text, with the task id and business date on every
line), and serve the worker's Prometheus metrics (``worker.metrics``) from
its main process, summing what every pool process counted.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from celery import Celery
from celery.beat import PersistentScheduler
from celery.signals import setup_logging, task_postrun, task_prerun, worker_init, worker_process_init, worker_ready

from config.celery import celery_config
from config.settings import Settings, warn_generated_secret_key
from worker import logs
from worker.logs import configure_logging
from worker.metrics import enable_multiprocess, serve_worker_metrics
from worker.services import runtime
from worker.services.runtime import freeze_startup_objects, utc_now

log = logging.getLogger(__name__)

#: The settings of the last app built here: the signal handlers read them.
_settings: Settings | None = None


class BeatScheduler(PersistentScheduler):
    """Celery's beat scheduler, its schedule file in ``VAR_DIR`` (``beat_schedule_filename``),
    whose folder it makes first: with ``SECRET_KEYS`` set nothing else creates ``VAR_DIR``, and
    beat stopped at its first start on a fresh machine."""

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


def create_celery(settings: Settings) -> Celery:
    global _settings
    _settings = settings
    app = Celery("pec_renewal", include=["tasks.daily", "tasks.mail", "tasks.charges", "tasks.events", "tasks.refunds"])
    app.conf.update(celery_config(settings))
    return app


@setup_logging.connect
def _configure_logging(loglevel=None, logfile=None, **_kwargs) -> None:
    """Celery leaves logging to us when this signal has a receiver (worker and beat alike)."""
    configure_logging(_settings.log_format if _settings else "auto", loglevel or logging.INFO, logfile=logfile or None)


@worker_init.connect
def _warn_generated_secret_key(**_kwargs) -> None:
    """Once, in the worker's main process before its pool forks: the pool signs links with the key."""
    if _settings is not None:
        warn_generated_secret_key(_settings)


@worker_init.connect
def _metrics_directory(**_kwargs) -> None:
    """Before the pool forks: every pool process will count into this worker's own directory."""
    if _settings is not None and _settings.metrics_port:
        enable_multiprocess(_settings)


@worker_ready.connect
def _serve_metrics(**_kwargs) -> None:
    if _settings is not None and _settings.metrics_port:
        serve_worker_metrics(_settings, utc_now)


@worker_process_init.connect
def _freeze_startup_objects(**_kwargs) -> None:
    freeze_startup_objects()


@task_prerun.connect
def _enter_task_context(task_id=None, task=None, args=(), kwargs=None, **_extra) -> None:
    """Every log line of the task carries its id and the business date it works on."""
    logs.task_id.set(task_id)
    logs.task_name.set(getattr(task, "name", None))
    logs.business_date.set(_business_date_of(task, args or (), kwargs or {}))


@task_postrun.connect
def _leave_task_context(**_kwargs) -> None:
    for variable in (logs.task_id, logs.task_name, logs.business_date):
        variable.set(None)


def _business_date_of(task, args, kwargs) -> str | None:
    """The task's ``business_date`` argument; when it is left out, today's, as the task itself decides."""
    try:
        arguments = inspect.signature(task.run).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError, AttributeError):
        return None
    if "business_date" not in inspect.signature(task.run).parameters:
        return None
    value = arguments.get("business_date")
    if value:
        return str(value)
    try:
        return runtime.current().today().isoformat()
    except Exception:  # the task reports a bad setting itself; a log field is not worth failing for
        return None
