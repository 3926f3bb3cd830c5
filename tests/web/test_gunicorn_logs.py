"""The link handler under real gunicorn, on loopback, with ``LOG_FORMAT=json``: every line it writes
(gunicorn's own, the access log, Flask's, an exception's traceback) is one JSON object."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.settings import TEST_SECRET_KEYS
from worker.rules.links import LinkSigner

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def empty_database_url(database_url) -> str:
    """A database with no tables at all: every page that reads one fails with an unexpected error (a 500)."""
    url = make_url(database_url)
    name = f"{url.database}_empty"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _serve(tmp_path: Path, database_url: str, log_format: str) -> tuple[str, str]:
    """Start gunicorn with the shipped configuration, make a few requests, stop it; (base URL, its output)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    environ = {name: value for name, value in os.environ.items() if not name.startswith("PEC_RENEWAL_")}
    environ.update(
        PEC_RENEWAL_DATABASE_URL=database_url,
        PEC_RENEWAL_SECRET_KEYS=TEST_SECRET_KEYS,
        PEC_RENEWAL_BASE_URL=base,
        PEC_RENEWAL_VAR_DIR=str(tmp_path / "var"),
        PEC_RENEWAL_LOG_FORMAT=log_format,
    )
    log_path = tmp_path / f"gunicorn-{log_format}.log"
    command = [
        str(Path(sys.executable).with_name("gunicorn")), "-c", "python:worker.web.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "worker.web:create_app()",
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(command, env=environ, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    home = httpx.get(f"{base}/")
                    break
                except httpx.TransportError:
                    assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
            assert home.status_code == 200
            token = LinkSigner(TEST_SECRET_KEYS.split(","), base, 200).renewal_token("m", 1, date(2027, 3, 31))
            assert httpx.get(f"{base}/rinnova/{token}").status_code == 500  # no tables: an unexpected error
            assert httpx.get(f"{base}/nothing").status_code == 404
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    return base, log_path.read_text()


def test_every_line_gunicorn_writes_is_json(tmp_path, empty_database_url):
    _base, output = _serve(tmp_path, empty_database_url, "json")
    lines = [line for line in output.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n\n{output}")
    assert all(isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record) for record in records)
    loggers = {record["logger"] for record in records}
    assert {"gunicorn.error", "gunicorn.access", "worker.web"} <= loggers, loggers
    assert any(record["message"].startswith("Starting gunicorn") for record in records)
    access = [record["message"] for record in records if record["logger"] == "gunicorn.access"]
    assert any('"GET /nothing HTTP/1.1" 404' in message for message in access), access
    assert any('"GET /rinnova/[redacted] HTTP/1.1" 500' in message for message in access), access
    (failure,) = [record for record in records if record["logger"] == "worker.web" and record["level"] == "ERROR"]
    assert failure["message"] == "Exception on /rinnova/[redacted] [GET]"
    assert failure["exception"].startswith("Traceback") and "UndefinedTable" in failure["exception"]
    assert "\\u001b" not in output and "\x1b" not in output


def test_text_format_under_gunicorn_is_readable_lines(tmp_path, empty_database_url):
    """LOG_FORMAT=text: gunicorn's lines in the same text layout as the rest; the traceback follows its line."""
    _base, output = _serve(tmp_path, empty_database_url, "text")
    assert " INFO gunicorn.error: Starting gunicorn" in output
    assert " ERROR worker.web: Exception on /rinnova/[redacted] [GET]\nTraceback (most recent call last):" in output
    assert '"GET /nothing HTTP/1.1" 404' in output
    assert not any(line.startswith("{") for line in output.splitlines())
