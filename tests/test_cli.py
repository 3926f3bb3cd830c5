"""The ``pec-renewal`` command on the embedded default, and its errors."""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.import_files import mailbox_row, write_csv
from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main


@pytest.fixture
def embedded_env(tmp_path):
    """The embedded default: nothing but a VAR_DIR (SQLite, Maildir, generated secret)."""
    return {"PEC_RENEWAL_VAR_DIR": str(tmp_path / "var")}


def invoke(env, *args):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def maildir_messages(var_dir: Path):
    box = mailbox.Maildir(var_dir / "mail", create=False)
    return [box[key] for key in box.keys()]


def test_embedded_default_runs_the_job_over_many_dates(tmp_path, embedded_env):
    rows = [
        mailbox_row(1, reference_email="studio@example.it"),
        mailbox_row(2, reference_email="studio@example.it"),
        mailbox_row(3, expires_on="2027-02-28", language="en"),
        mailbox_row(
            4, address="info@pec.rossi-srl.it", expires_on="", domain="rossi-srl.it", domain_expires_on="2027-03-31"
        ),
    ]
    source = write_csv(tmp_path / "mailboxes.csv", rows)
    result = invoke(embedded_env, "import", "mailboxes", str(source))
    assert result.exit_code == 0, result.output
    assert "imported 4 mailboxes" in result.output

    day = date(2026, 11, 25)
    while day <= date(2027, 7, 1):
        result = invoke(embedded_env, "run-daily", "--date", day.isoformat(), "--json")
        assert result.exit_code == 0, result.output
        day += timedelta(days=1)

    messages = maildir_messages(tmp_path / "var")
    keys = [(m["To"], m["X-PEC-Renewal-Kind"], m["X-PEC-Renewal-Stage"]) for m in messages]
    assert len(keys) == len(set(keys)), "a notice was sent twice"
    stages = ["-3m", "-2m", "-1m", "-15d", "-7d", "-1d", "0d", "+1d", "+30d", "+60d", "+83d"]
    for to, kind in [
        ("studio@example.it", None),
        ("titolare3@example.it", None),
        ("titolare4@example.it", "domain-expiry-notice"),
    ]:
        got = sorted(stage for (address, k, stage) in keys if address == to and (kind is None or k == kind))
        assert got == sorted(stages), to
    studio = [m for m in messages if m["To"] == "studio@example.it"]
    assert {m["X-PEC-Renewal-Mailboxes"] for m in studio} == {
        "casella1@pec.provider.example.it,casella2@pec.provider.example.it"
    }


def test_run_daily_prints_a_summary_and_dry_run_changes_nothing(tmp_path, embedded_env):
    source = write_csv(tmp_path / "mailboxes.csv", [mailbox_row(1), mailbox_row(2, expires_on="2027-03-24")])
    invoke(embedded_env, "import", "mailboxes", str(source))

    dry = invoke(embedded_env, "run-daily", "--date", "2027-03-24", "--dry-run")
    assert dry.exit_code == 0
    assert "Dry run for 2027-03-24" in dry.output
    assert "-> titolare1@example.it  expiry-notice -7d  casella1@pec.provider.example.it" in dry.output
    assert not (tmp_path / "var" / "mail").exists() or maildir_messages(tmp_path / "var") == []

    real = invoke(embedded_env, "run-daily", "--date", "2027-03-24", "--json")
    summary = json.loads(real.output)
    assert summary["examined"] == 2
    assert summary["emails"] == {"expiry-notice -7d": 1, "expiry-notice 0d": 1}
    assert summary["sent"] == 2
    assert summary["sent_by_kind"] == {"expiry-notice -7d": 1, "expiry-notice 0d": 1}
    again = invoke(embedded_env, "run-daily", "--date", "2027-03-24").output
    assert "examined: 0 mailboxes" in again and "queued: 0 emails for 0 mailboxes" in again
    assert "delivery: sent 0, deferred 0 (retried later), bounced 0, failed 0" in again
    assert len(maildir_messages(tmp_path / "var")) == 2


def test_bad_date_option_is_a_clear_error(embedded_env):
    result = CliRunner().invoke(main, ["run-daily", "--date", "2027-02-30"], env=embedded_env)
    assert result.exit_code == 2
    assert "'2027-02-30' is not a date" in result.output


def test_bad_import_file_is_refused_whole(tmp_path, embedded_env):
    source = write_csv(tmp_path / "bad.csv", [mailbox_row(1), mailbox_row(2, plan="gold")])
    result = CliRunner().invoke(main, ["import", "mailboxes", str(source)], env=embedded_env)
    assert result.exit_code == 2
    assert "line 3, column plan:" in result.output
    assert "nothing was imported" in result.output
    ok = write_csv(tmp_path / "ok.csv", [mailbox_row(5)])
    assert "imported 1 mailboxes" in invoke(embedded_env, "import", "mailboxes", str(ok)).output


def run_command(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PEC_RENEWAL_TIMEZONE", "Mars/Olympus"),
        ("PEC_RENEWAL_MAIL_BACKEND", "pigeon"),
        ("PEC_RENEWAL_SMTP_PORT", "smtp"),
        ("PEC_RENEWAL_SECRET_KEYS", "short"),
    ],
)
def test_a_bad_setting_stops_with_one_line_naming_the_variable(tmp_path, variable, value):
    result = run_command(
        ["worker.cli.main", "run-daily"], {variable: value, "PEC_RENEWAL_VAR_DIR": str(tmp_path)}, tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pec-renewal: {variable}: ")
    assert "Traceback" not in result.stderr


def test_celery_app_refuses_a_bad_setting_with_one_line(tmp_path):
    result = run_command(
        ["celery", "-A", "worker.celery_app", "inspect", "ping"],
        {"PEC_RENEWAL_TIMEZONE": "Nowhere/Else", "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS},
        tmp_path,
    )
    assert result.returncode != 0
    assert "PEC_RENEWAL_TIMEZONE: 'Nowhere/Else' is not a known time zone" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_processes_running_the_same_day_at_once_send_each_notice_once(tmp_path, embedded_env):
    rows = [mailbox_row(number, reference_email=f"titolare{number % 30}@example.it") for number in range(90)]
    invoke(embedded_env, "import", "mailboxes", str(write_csv(tmp_path / "mailboxes.csv", rows)))
    env = {**os.environ, **embedded_env, "PEC_RENEWAL_SCAN_BATCH_SIZE": "5"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "run-daily", "--date", "2027-03-31", "--json"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    summaries = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        summaries.append(json.loads(out))
    assert sum(summary["emails"].get("expiry-notice 0d", 0) for summary in summaries) == 30
    messages = maildir_messages(tmp_path / "var")
    assert sorted(m["To"] for m in messages) == sorted(f"titolare{n}@example.it" for n in range(30))


def test_an_unreachable_database_is_one_clear_line(tmp_path):
    result = run_command(
        ["worker.cli.main", "run-daily", "--date", "2027-03-31"],
        {
            "PEC_RENEWAL_VAR_DIR": str(tmp_path),
            "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
            "PEC_RENEWAL_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        },
        tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pec-renewal: cannot use the database: "), result.stderr
    assert "Traceback" not in result.stderr


def test_report_forecasts_the_coming_days_and_the_last_run(tmp_path, embedded_env):
    rows = [
        mailbox_row(1, expires_on="2027-03-31"),  # -7d on 2027-03-24
        mailbox_row(2, expires_on="2027-03-25"),  # -1d on 2027-03-24, 0d on the 25th
        mailbox_row(
            3, address="info@pec.rossi-srl.it", expires_on="", domain="rossi-srl.it", domain_expires_on="2027-04-08"
        ),
    ]
    invoke(embedded_env, "import", "mailboxes", str(write_csv(tmp_path / "mailboxes.csv", rows)))
    before = json.loads(invoke(embedded_env, "report", "--date", "2027-03-24", "--days", "3", "--json").output)
    # Never run: every mailbox is overdue and counted on the first day.
    assert before["overdue"] == 3 and before["last_run"] is None
    assert before["due"]["2027-03-24"] == {"domain-expiry-notice": 1, "expiry-notice": 2}

    invoke(embedded_env, "run-daily", "--date", "2027-03-24")
    after = json.loads(invoke(embedded_env, "report", "--date", "2027-03-25", "--days", "3", "--json").output)
    assert after["overdue"] == 0
    assert after["due"] == {"2027-03-25": {"expiry-notice": 1}, "2027-03-26": {"expired-notice": 1}, "2027-03-27": {}}
    assert after["last_run"]["business_date"] == "2027-03-24" and after["last_run"]["summary"]["sent"] == 3
    assert after["outbox"] == {"sent": 3} and after["bounced_addresses"] == 0
    text = invoke(embedded_env, "report", "--date", "2027-03-25", "--days", "3").output
    assert "Last run 2027-03-24 (finished): sent 3" in text and "expired" in text
