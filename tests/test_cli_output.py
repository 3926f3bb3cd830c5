"""What the ``pec-renewal`` command prints besides its results, run as an operator runs it (a
subprocess, stderr a pipe): the generated-key warning, colour, and the links ``serve`` writes."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import pytest

from tests.support.import_files import mailbox_row, write_csv
from worker.rules.links import LinkSigner

WARNING = "PEC_RENEWAL_SECRET_KEYS is not set"
ANSI = re.compile(r"\x1b\[|\\u001b\[")  # raw, or escaped inside a JSON line


def pec_renewal(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("PEC_RENEWAL_")}
    environ.update({"PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fleet(tmp_path) -> Path:
    """The embedded default with two mailboxes: a notice with a Rinnova link is due on 2027-03-24."""
    source = write_csv(tmp_path / "mailboxes.csv", [mailbox_row(1), mailbox_row(2, expires_on="2027-03-24")])
    result = pec_renewal(tmp_path, "import", "mailboxes", str(source))
    assert result.returncode == 0, result.stderr
    return tmp_path


# -- The generated secret key's warning ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("run-daily", "--help"),
        ("db", "upgrade", "--help"),
        ("payments", "register", "--help"),
        ("serve", "--help"),
    ],
)
def test_help_never_warns_about_the_key(tmp_path, args):
    result = pec_renewal(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert WARNING not in result.stderr and result.stderr == ""


def test_commands_that_sign_nothing_do_not_warn(fleet):
    for args in (("report", "--date", "2027-03-24"), ("check",), ("db", "upgrade"), ("sandbox", "charges")):
        result = pec_renewal(fleet, *args)
        assert WARNING not in result.stderr, (args, result.stderr)


def test_a_command_that_signs_links_with_the_generated_key_warns_once(fleet):
    result = pec_renewal(fleet, "run-daily", "--date", "2027-03-24", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == 2  # two notices, each with its signed link
    assert result.stderr.count(WARNING) == 1, result.stderr
    line = next(line for line in result.stderr.splitlines() if WARNING in line)
    assert json.loads(line)["level"] == "WARNING"  # stderr is no terminal: LOG_FORMAT auto is JSON
    # With the keys set, not a word.
    keyed = pec_renewal(fleet, "run-daily", "--date", "2027-03-25", env={"PEC_RENEWAL_SECRET_KEYS": "k" * 40})
    assert keyed.returncode == 0 and WARNING not in keyed.stderr


def test_demo_warns_once(tmp_path):
    result = pec_renewal(tmp_path, "demo", "--mailboxes", "30")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(WARNING) == 1, result.stderr


# -- No colour outside a terminal ----------------------------------------------------------------------


def test_nothing_the_commands_print_to_a_pipe_holds_colour_codes(fleet):
    for args in (("run-daily", "--date", "2027-03-24"), ("report", "--date", "2027-03-24"), ("check",)):
        for log_format in ("json", "text"):
            result = pec_renewal(fleet, *args, env={"PEC_RENEWAL_LOG_FORMAT": log_format})
            assert not ANSI.search(result.stdout + result.stderr), (args, log_format, result.stdout + result.stderr)


# -- serve --port P writes links to port P ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Serve:
    """``pec-renewal serve`` in a subprocess, stopped by its own pid."""

    def __init__(self, directory: Path, *args: str, env: dict | None = None):
        environ = {name: value for name, value in os.environ.items() if not name.startswith("PEC_RENEWAL_")}
        environ.update({"PEC_RENEWAL_VAR_DIR": str(directory / "var"), **(env or {})})
        self.log = directory / "serve.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli.main", "serve", *args],
                env=environ,
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, url: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url)
                return
            except httpx.TransportError:
                assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.1)

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.log.read_text()


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, html[:2000]
    return match.group(1) or match.group(2)


def _post(browser: httpx.Client, path: str, data: dict) -> httpx.Response:
    page = browser.get(path)
    assert page.status_code == 200, (path, page.status_code)
    return browser.post(path, data={"csrf_token": _csrf(page.text), **data})


def test_serve_on_another_port_writes_its_links_to_that_port(fleet):
    """With BASE_URL unset, the checkout link of an order confirmed on ``serve --port P`` is on port P."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = Serve(fleet, "--port", str(port))
    try:
        server.wait_for(base + "/")
        key = (fleet / "var" / "secret_key").read_text().strip()
        with sqlite3.connect(fleet / "var" / "pec-renewal.sqlite3") as database:
            mailbox_id, expires_on = database.execute(
                "SELECT id, expires_on FROM mailboxes WHERE address = 'casella1@pec.provider.example.it'"
            ).fetchone()
        link = LinkSigner((key,), base, 200).renewal_url(mailbox_id, date.fromisoformat(expires_on))
        with httpx.Client(base_url=base) as browser:
            started = _post(browser, link[len(base) :], {})
            assert started.status_code == 303, started.text[:2000]
            order = "/".join(started.headers["Location"].split("/")[:3])  # /ordine/<public id>
            steps = [
                (
                    "caselle",
                    {
                        f"plan-{mailbox_id}": "standard",
                        f"extra_space_gb-{mailbox_id}": "0",
                        f"extra_archive_gb-{mailbox_id}": "0",
                    },
                ),
                (
                    "intestatario",
                    {
                        "name": "Mario Rossi",
                        "kind": "private",
                        "reference_email": "mario.rossi@example.it",
                        "tax_code": "RSSMRA80A01H501U",
                        "postal_address": "Via Roma 1, 00100 Roma",
                    },
                ),
                ("modulo", {"method": "card", "years": "1"}),
                ("condizioni", {"accept": "y", "approve_clauses": "y"}),
                ("conferma", {}),
            ]
            for step, data in steps:
                answer = _post(browser, f"{order}/{step}", data)
                assert answer.status_code == 303, (step, answer.text[:3000])
    finally:
        log = server.stop()
    assert f"links point at {base}" in log
    assert not ANSI.search(log), log  # werkzeug's request lines, uncoloured in a log
    with sqlite3.connect(fleet / "var" / "pec-renewal.sqlite3") as database:
        contexts = [json.loads(row[0]) for row in database.execute("SELECT context FROM outbox_messages")]
    urls = [context["payment"]["checkout_url"] for context in contexts if "payment" in context]
    assert urls and all(url.startswith(f"{base}/ordine/") for url in urls), urls


def test_an_explicit_base_url_wins_over_serve_s_port(tmp_path):
    port = _free_port()
    server = Serve(tmp_path, "--port", str(port), env={"PEC_RENEWAL_BASE_URL": "https://rinnovi.example.test"})
    try:
        server.wait_for(f"http://127.0.0.1:{port}/")
    finally:
        log = server.stop()
    assert "links point at https://rinnovi.example.test" in log
