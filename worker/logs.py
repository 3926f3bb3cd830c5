"""Logging, configured once per process: JSON lines in production, readable text on a terminal.

``configure_logging`` is called by the two entry points, the CLI
(``worker.cli.main.main``) and Celery (the ``setup_logging`` signal in
``worker.celery_app``, for the worker and beat); nothing else configures
logging.  Every record carries the Celery task id and the business date it
is about, when there is one: they live in context variables that the
``task_prerun`` signal (and ``pec-renewal run-daily``) set.

A renewal token is a bearer credential, so the formatters pass every line,
tracebacks included, through :func:`redact_tokens` before it is written: the
``/rinnova/<token>`` paths and any bare itsdangerous token
(``worker.web.security.redact``, the one redaction the access log uses too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import date, datetime, timezone
from typing import TextIO

from worker.web.security import redact

#: The Celery task being run by this thread, and the business date it works on.
task_id: ContextVar[str | None] = ContextVar("pec_renewal_task_id", default=None)
task_name: ContextVar[str | None] = ContextVar("pec_renewal_task_name", default=None)
business_date: ContextVar[str | None] = ContextVar("pec_renewal_business_date", default=None)

_HANDLER_NAME = "pec-renewal"


#: ``text`` with renewal paths and signed tokens replaced by ``[redacted]``.
redact_tokens = redact


def context_fields() -> dict[str, str]:
    """The task id, task name and business date of the current context (only those that are set)."""
    fields = {"task_id": task_id.get(), "task": task_name.get(), "business_date": business_date.get()}
    return {name: value for name, value in fields.items() if value is not None}


@contextlib.contextmanager
def log_context(*, day: date | str | None = None, task: str | None = None, name: str | None = None) -> Iterator[None]:
    """Within the block, every record carries this business date (and task id and name)."""
    tokens = [
        (variable, variable.set(str(value)))
        for variable, value in ((business_date, day), (task_id, task), (task_name, name))
        if value is not None
    ]
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, process, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,  # MainProcess, or a Celery pool process: ForkPoolWorker-1
            "pid": record.process,
        }
        entry.update(context_fields())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact_tokens(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [task=… date=…]: message``, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = context_fields()
        shown = [f"task={fields['task_id']}"] if "task_id" in fields else []
        if "business_date" in fields:
            shown.append(f"date={fields['business_date']}")
        record.context = f" [{' '.join(shown)}]" if shown else ""
        return redact_tokens(super().format(record))


def wants_json(log_format: str, stream: TextIO) -> bool:
    """``auto`` is JSON unless the stream is a terminal (systemd, containers and files get JSON)."""
    if log_format == "auto":
        return not (hasattr(stream, "isatty") and stream.isatty())
    return log_format == "json"


def configure_logging(
    log_format: str = "auto",
    level: int | str = logging.INFO,
    *,
    stream: TextIO | None = None,
    logfile: str | None = None,
    unless_configured: bool = False,
) -> logging.Handler | None:
    """Give the root logger one handler (replacing ours from an earlier call), at ``level``.

    Handlers other code put on the root logger (pytest's, for instance) are
    left alone; with ``unless_configured``, as ``logging.basicConfig`` does,
    their presence means the host program configured logging, and nothing is
    done (returns None).
    """
    root = logging.getLogger()
    if unless_configured and any(handler.get_name() != _HANDLER_NAME for handler in root.handlers):
        return None
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    if logfile:
        handler: logging.Handler = logging.FileHandler(logfile, encoding="utf-8")
        as_json = log_format != "text"
    else:
        stream = stream or sys.stderr
        handler = logging.StreamHandler(stream)
        as_json = wants_json(log_format, stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


def remove_logging(handler: logging.Handler | None) -> None:
    """Take off a handler :func:`configure_logging` added (the CLI does, when a command ends)."""
    if handler is None:
        return
    root = logging.getLogger()
    root.removeHandler(handler)
    handler.close()
