"""gunicorn settings for the link handler: ``gunicorn -c python:worker.web.gunicorn_conf 'worker.web:create_app()'``.

The access log is on (to stdout) with the renewal token redacted from the
request line and the path; the Referer is never logged.
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from worker.web.security import redact

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
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if key in atoms and isinstance(atoms[key], str):
                atoms[key] = redact(atoms[key])
        atoms["f"] = "-"  # the Referer: never logged
        return atoms


logger_class = RedactingLogger
