"""gunicorn settings for the link handler: ``gunicorn -c python:worker.web.gunicorn_conf 'worker.web:create_app()'``.

The access log is on (to stdout) with the renewal token redacted from the
request line and the path; the Referer is never logged.

Every line is in ``PEC_RENEWAL_LOG_FORMAT`` (``worker.logs``): gunicorn's error
and access logs get its formatter, and the root logger its handler (on the
error log's stream or file), so Flask's lines, the application's and their
tracebacks are one JSON object per line under ``json`` (or ``auto`` off a
terminal), like the CLI's and Celery's.
"""

from __future__ import annotations

import logging
import sys

from gunicorn.glogging import Logger

from config.settings import Settings, SettingsError, warn_generated_secret_key
from worker.logs import configure_logging, formatter_for
from worker.rules.links import redact

try:
    _settings = Settings.from_env()
except SettingsError as error:
    sys.exit(f"pec-renewal: {error}")

bind = "127.0.0.1:8000"
#: Processes, each with threads: a link page spends most of its time waiting
#: on PostgreSQL round trips, which threads overlap.  Sync workers (one request
#: at a time, no keep-alive) served about 40% as many pages
#: (bench/link_handler.sh).  Each thread holds at most one pooled database
#: connection: workers x threads (16) is what PostgreSQL must allow for this
#: server.  ``--workers N`` on the command line sets more on a bigger machine.
workers = 2
worker_class = "gthread"
threads = 8
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'


class RedactingLogger(Logger):
    def setup(self, cfg):
        super().setup(cfg)
        log_format = _settings.log_format
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                stream = None if isinstance(handler, logging.FileHandler) else getattr(handler, "stream", None)
                handler.setFormatter(formatter_for(log_format, stream))
        # Flask's and the application's records (and their tracebacks) reach the root logger: give it
        # the error log's destination and format.  Done in the master, so every worker forks with it.
        errorlog = cfg.errorlog if cfg.errorlog and cfg.errorlog != "-" else None
        configure_logging(log_format, self.loglevel, logfile=errorlog)
        warn_generated_secret_key(_settings)  # once, before the workers fork: they sign with the key

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if key in atoms and isinstance(atoms[key], str):
                atoms[key] = redact(atoms[key])
        atoms["f"] = "-"  # the Referer: never logged
        return atoms


logger_class = RedactingLogger
