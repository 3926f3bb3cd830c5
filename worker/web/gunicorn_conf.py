"""gunicorn settings for the link handler: ``gunicorn -c python:worker.web.gunicorn_conf 'worker.web:create_app()'``.

The access log is on (to stdout) with the renewal token redacted from the
request line and the path; the Referer is never logged.
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from worker.web.security import redact

bind = "127.0.0.1:8000"
workers = 2
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'


class RedactingLogger(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if key in atoms and isinstance(atoms[key], str):
                atoms[key] = redact(atoms[key])
        atoms["f"] = "-"  # the Referer: never logged
        return atoms


logger_class = RedactingLogger
