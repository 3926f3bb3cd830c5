"""Structured logs: JSON lines with the task id and business date, readable text, and never a token."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, date, datetime

import pytest

import worker.celery_setup  # noqa: F401  (connects the signal handlers)
from config.settings import Settings, SettingsError
from tests.support.factories import make_mailbox
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from worker import logs
from worker.celery_setup import create_celery
from worker.logs import JsonFormatter, TextFormatter, configure_logging, log_context, redact_tokens, remove_logging
from worker.rules.links import LinkSigner
from worker.services import runtime
from worker.services.runtime import Runtime

DAY = date(2027, 3, 31)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured():
    """The root logger's output as JSON lines, through the handler ``configure_logging`` installs."""
    stream = io.StringIO()
    handler = configure_logging("json", logging.INFO, stream=stream)
    yield stream
    remove_logging(handler)


def json_records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner(TEST_SECRET_KEYS.split(","), "https://rinnovi.example.test", 200)


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory):
    app = create_celery(make_settings(tmp_path_factory.mktemp("celery")))

    @app.task(name="tests.logs.note_the_day")
    def note_the_day(mailbox_ids: list[int], business_date: str | None = None) -> None:
        logging.getLogger("worker.services.notices").info("batch of %s mailboxes", len(mailbox_ids))

    return app


def test_a_task_s_lines_carry_its_id_and_business_date(celery_app, captured):
    result = celery_app.tasks["tests.logs.note_the_day"].apply(args=[[1, 2, 3], "2027-03-31"])
    logging.getLogger("worker.mail.outbox").info("after the task")

    first, after = [record for record in json_records(captured) if record["logger"].startswith("worker.")]
    assert first["message"] == "batch of 3 mailboxes"
    assert first["task_id"] == result.id
    assert first["task"] == "tests.logs.note_the_day"
    assert first["business_date"] == "2027-03-31"
    assert first["level"] == "INFO"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    # Outside the task, no stale context.
    assert "task_id" not in after and "business_date" not in after


def test_a_task_left_to_pick_today_logs_today(celery_app, captured, tmp_path):
    rome_noon = datetime(2027, 3, 31, 22, 30, tzinfo=UTC)  # already 1 April in Rome
    runtime.install(Runtime(make_settings(tmp_path), clock=lambda: rome_noon))
    try:
        celery_app.tasks["tests.logs.note_the_day"].apply(args=[[1]])
    finally:
        runtime.install(None)
    (record,) = [record for record in json_records(captured) if record["logger"] == "worker.services.notices"]
    assert record["business_date"] == "2027-04-01"


def test_a_token_never_reaches_a_log_line(captured, signer):
    url = signer.renewal_url(42, DAY)
    token = url.rsplit("/", 1)[1]
    log = logging.getLogger("worker.web.views")
    log.warning("link opened: %s", url)
    log.warning("token %s refused", token)
    try:
        raise ValueError(f"cannot read {token}")
    except ValueError:
        log.exception("failed on /rinnova/%s", token)

    text = captured.getvalue()
    assert token not in text
    assert token[:20] not in text
    records = json_records(captured)
    assert records[0]["message"] == "link opened: https://rinnovi.example.test/rinnova/[redacted]"
    assert records[1]["message"] == "token [redacted] refused"
    assert records[2]["message"] == "failed on /rinnova/[redacted]"
    assert "cannot read [redacted]" in records[2]["exception"]


def test_the_text_format_is_readable_and_redacted(signer):
    token = signer.renewal_token("m", 7, DAY)
    stream = Terminal()
    handler = configure_logging("auto", logging.INFO, stream=stream)  # a terminal: text
    try:
        with log_context(day=DAY, task="abc-123"):
            logging.getLogger("worker.mail.outbox").warning("outbox 5 deferred (token %s)", token)
        logging.getLogger("worker.mail.outbox").warning("no context")
    finally:
        remove_logging(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith(
        " WARNING worker.mail.outbox [task=abc-123 date=2027-03-31]: outbox 5 deferred (token [redacted])"
    )
    assert second.endswith(" WARNING worker.mail.outbox: no context")


def test_auto_is_json_unless_the_stream_is_a_terminal():
    assert logs.wants_json("auto", io.StringIO()) is True
    assert logs.wants_json("auto", Terminal()) is False
    assert logs.wants_json("text", io.StringIO()) is False
    assert logs.wants_json("json", Terminal()) is True
    handler = configure_logging("auto", stream=io.StringIO())
    try:
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        remove_logging(handler)
    handler = configure_logging("auto", stream=Terminal())
    try:
        assert isinstance(handler.formatter, TextFormatter)
    finally:
        remove_logging(handler)


def test_configuring_twice_keeps_one_handler():
    first = configure_logging("json", stream=io.StringIO())
    second = configure_logging("text", stream=io.StringIO())
    try:
        ours = [handler for handler in logging.getLogger().handlers if handler.get_name() == "pec-renewal"]
        assert ours == [second]
        assert first not in logging.getLogger().handlers
    finally:
        remove_logging(second)


def test_redaction_leaves_ordinary_text_alone():
    line = "outbox 12 sent <0f3a9c2e4b5d6a7f8e9d0c1b2a3f4e5d@pec-provider.example> to studio@example.it, key renewal:3:2027-03-31:1"
    assert redact_tokens(line) == line


def test_a_compressed_token_is_redacted_whole():
    """itsdangerous starts a compressed payload with a dot: no piece of the token may stay behind."""
    from itsdangerous import URLSafeTimedSerializer

    token = URLSafeTimedSerializer("k" * 40, salt="s").dumps({"mailbox": 1, "padding": "x" * 200})
    assert token.startswith(".")
    assert redact_tokens(f"lookup failed for {token} at 06:00") == "lookup failed for [redacted] at 06:00"


def test_log_format_setting(tmp_path):
    assert make_settings(tmp_path).log_format == "auto"
    assert make_settings(tmp_path, log_format="JSON").log_format == "json"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "PEC_RENEWAL_VAR_DIR": str(tmp_path),
                "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
                "PEC_RENEWAL_LOG_FORMAT": "xml",
            }
        )
    assert str(caught.value) == "PEC_RENEWAL_LOG_FORMAT: 'xml' is not one of auto, text, json"


def test_run_daily_logs_json_with_the_business_date(tmp_path, database_url, session_factory, smtp_server):
    """A delivery deferred during ``pec-renewal run-daily`` is logged as JSON with the date (a pipe, not a terminal)."""
    with session_factory() as session, session.begin():
        make_mailbox(session, expires_on=DAY)
    smtp_server.fail_next("451 4.3.0 Try again later")
    env = {
        **os.environ,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_MAIL_BACKEND": "smtp",
        "PEC_RENEWAL_SMTP_HOST": smtp_server.host,
        "PEC_RENEWAL_SMTP_PORT": str(smtp_server.port),
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
    }
    env.pop("PEC_RENEWAL_LOG_FORMAT", None)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "-v", "run-daily", "--date", DAY.isoformat()],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    deferred = [
        record for record in records if record["logger"] == "worker.mail.outbox" and "deferred" in record["message"]
    ]
    assert len(deferred) == 1, done.stderr
    assert deferred[0]["business_date"] == DAY.isoformat()
    assert "deferred 1" in done.stdout


ESC = chr(27)


@pytest.mark.parametrize(
    ("log_format", "stream", "coloured"),
    [
        ("json", Terminal(), False),
        ("json", io.StringIO(), False),
        ("text", io.StringIO(), False),
        ("text", Terminal(), True),
    ],
)
def test_colour_codes_reach_only_a_terminal(log_format, stream, coloured):
    """werkzeug colours its request lines whatever the stream: a log file or a journal gets them plain."""
    handler = configure_logging(log_format, logging.INFO, stream=stream)
    try:
        logging.getLogger("werkzeug").info('127.0.0.1 - - "%s[33mGET /nothing HTTP/1.1%s[0m" 404 -', ESC, ESC)
        try:
            raise ValueError(ESC + "[1;31mred" + ESC + "[0m")
        except ValueError:
            logging.getLogger("worker.web").exception("failed")
    finally:
        remove_logging(handler)
    text = stream.getvalue()
    assert (ESC in text) is coloured
    if log_format == "text" and not coloured:
        assert '"GET /nothing HTTP/1.1" 404 -' in text and "ValueError: red" in text
    if log_format == "json":
        assert "\\u001b" not in text
        first, second = (json.loads(line) for line in text.splitlines())
        assert first["message"] == '127.0.0.1 - - "GET /nothing HTTP/1.1" 404 -'
        assert second["exception"].endswith("ValueError: red")
