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
(``worker.rules.links.redact``, the one redaction the access log uses too).

Colour codes other libraries put in their messages (werkzeug colours its
request lines and its start-up warning, whatever the stream) are taken out
of every JSON line, and of text lines unless they go to a terminal.

Under gunicorn, ``worker.web.gunicorn_conf`` gives gunicorn's error and access
logs these formatters too (:func:`formatter_for`), and the root logger this
handler, so every line it writes (gunicorn's, Flask's, the app's, tracebacks)
is in ``LOG_FORMAT``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, date, datetime
from typing import TextIO

from worker.rules.links import redact

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


#: An ANSI escape sequence (colour, bold, cursor movement): CSI, then parameters, then a final byte.
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def strip_colour(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI_RE.sub("", text) if "\x1b" in text else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, process, context, exception.

    No colour codes: a message's, or a traceback's, are taken out."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": strip_colour(record.getMessage()),
            "process": record.processName,  # MainProcess, or a Celery pool process: ForkPoolWorker-1
            "pid": record.process,
        }
        entry.update(context_fields())
        if record.exc_info:
            entry["exception"] = strip_colour(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = strip_colour(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact_tokens(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [task=… date=…]: message``, for people reading a terminal.

    Colour codes in a message are kept only with ``colour`` (the stream is a terminal)."""

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        fields = context_fields()
        shown = [f"task={fields['task_id']}"] if "task_id" in fields else []
        if "business_date" in fields:
            shown.append(f"date={fields['business_date']}")
        record.context = f" [{' '.join(shown)}]" if shown else ""
        line = redact_tokens(super().format(record))
        return line if self.colour else strip_colour(line)


def wants_json(log_format: str, stream: TextIO) -> bool:
    """``auto`` is JSON unless the stream is a terminal (systemd, containers and files get JSON)."""
    if log_format == "auto":
        return not _is_terminal(stream)
    return log_format == "json"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def formatter_for(log_format: str, stream: TextIO | None) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT`` for lines written to ``stream`` (None: a file)."""
    if stream is None:
        return TextFormatter() if log_format == "text" else JsonFormatter()
    if wants_json(log_format, stream):
        return JsonFormatter()
    return TextFormatter(colour=_is_terminal(stream))


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
        formatter = formatter_for(log_format, None)
    else:
        stream = stream or sys.stderr
        handler = logging.StreamHandler(stream)
        formatter = formatter_for(log_format, stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
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
