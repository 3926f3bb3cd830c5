"""The benchmarks' commands, as ``bench/README.md`` gives them, at a tiny N.

Not timings (the benchmarks themselves are for those): each command must run
against the real services, exit 0 and print its JSON summary as its last line,
with the keys ``bench/README.md`` names.  The options (``--mailboxes N`` and the
service URLs) and the summaries are what operators' scripts and the acceptance
checks call and read.  Each benchmark gets its own database, named after the
test database with ``bench`` in it (the benchmarks refuse any other), dropped
before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bench.databases import psycopg_url
from tests.support.settings import TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent


def _drop_database(url: str) -> None:
    with psycopg.connect(psycopg_url(url, database="postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


@pytest.fixture
def bench_database(request):
    """A database of its own for the benchmark of this test, dropped before and after."""
    url = make_url(TEST_DATABASE_URL)
    url = url.set(database=f"{url.database}_bench_{request.node.name.removeprefix('test_')}")
    url = url.render_as_string(hide_password=False)
    _drop_database(url)
    yield url
    _drop_database(url)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(*command: str, timeout: float = 300) -> dict:
    """Run a benchmark; its summary (the last line of stdout, JSON).

    In a session of its own: past ``timeout`` the whole group goes (the gunicorn servers, Celery
    workers and sink a benchmark starts would outlive a kill of the benchmark alone).
    """
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PEC_RENEWAL_")}
    benchmark = next(part for part in command if part.startswith("bench/"))
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{benchmark} still ran after {timeout} s:\n{stderr[-4000:]}")
    assert process.returncode == 0, f"{benchmark} exited {process.returncode}:\n{stderr[-4000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def _count(url: str, sql: str) -> int:
    with psycopg.connect(psycopg_url(url)) as connection:
        return connection.execute(sql).fetchone()[0]


def test_import(bench_database):
    summary = _run(
        sys.executable,
        "bench/import.py",
        "--mailboxes",
        "600",
        "--rounds",
        "1",
        "--floor-rounds",
        "1",
        "--database-url",
        bench_database,
    )
    assert summary["mailboxes"] == summary["rows"] == 600
    assert summary["bulk_load_path"] is True
    assert summary["import_seconds"] > 0 and summary["reimport_seconds"] > 0
    assert summary["target_met"] is (summary["ratio"] <= summary["target_ratio"] == 5.0)
    assert summary["floor_seconds"] > 0 and summary["floor_ratio"] > 0
    assert summary["cores"] == os.cpu_count()
    assert summary["best_ratio_with_this_checking"] > 0
    # The floor wrote the imported fleet back whole, and the sequences past it: the next row gets a new id.
    assert _count(bench_database, "SELECT count(*) FROM mailboxes") == 600
    assert _count(bench_database, "SELECT nextval('mailboxes_id_seq') - max(id) FROM mailboxes") == 1


def test_import_takes_its_older_option_and_no_floor(bench_database):
    summary = _run(
        sys.executable,
        "bench/import.py",
        "--rows",
        "200",
        "--rounds",
        "1",
        "--floor-rounds",
        "0",
        "--database-url",
        bench_database,
    )
    assert summary["mailboxes"] == 200
    assert "floor_ratio" not in summary


def test_quiet_day(bench_database):
    summary = _run(
        sys.executable,
        "bench/quiet_day.py",
        "--mailboxes",
        "5000",
        "--due",
        "50",
        "--repeat",
        "1",
        "--database-url",
        bench_database,
    )
    assert summary["mailboxes"] == 5000
    assert summary["quiet_day"]["due"] == 0 and summary["normal_day"]["due"] == 50
    for day in ("quiet_day", "normal_day"):
        assert summary[day]["scan_ms"] > 0 and summary[day]["raw_read_ms"] > 0 and summary[day]["ratio"] > 0


def test_charges(bench_database):
    summary = _run(
        sys.executable,
        "bench/charges.py",
        "--mailboxes",
        "30",
        "--latency-ms",
        "5",
        "--concurrency",
        "4",
        "--database-url",
        bench_database,
    )
    assert summary["mailboxes"] == summary["gateway_charges"] == summary["mailboxes_renewed"] == 30
    assert summary["stored_methods"] is True and summary["charges_of_stored_methods"] == 30
    assert summary["no_double_charge"] is True and summary["mailboxes_charged_twice"] == 0
    assert summary["errors"] == 0 and summary["ratio_to_ideal"] > 0


def test_invoices(bench_database):
    summary = _run(
        sys.executable, "bench/invoices.py", "--mailboxes", "30", "--validate", "5", "--database-url", bench_database,
    )  # fmt: skip
    assert summary["invoices"] == summary["charges_succeeded"] == summary["files_written"] == 30
    assert summary["files_on_disk"] == 30 and summary["files_validated"] == 5
    assert summary["numbers_gapless"] is True and summary["invoices_waiting"] == 0 and summary["charge_errors"] == 0
    # Timings: present and not negative (at 30 invoices the baseline rounds to 0.0 s).
    assert summary["export_seconds"] >= 0 and summary["baseline_seconds"] >= 0


def test_daily_peak(bench_database):
    assert shutil.which("smtp-sink") or Path("/usr/sbin/smtp-sink").exists(), (
        "Postfix's smtp-sink is missing: scripts/install-bench-tools"
    )
    summary = _run(
        sys.executable,
        "bench/daily_peak.py",
        "--mailboxes",
        "3000",
        "--due",
        "300",
        "--days",
        "2",
        "--database-url",
        bench_database,
        "--redis-url",
        TEST_REDIS_URL,
        "--smtp",
        f"127.0.0.1:{_free_port()}",
        "--worker",
        "scan,notices:1",
        "--worker",
        "mail:2",
        "--bare-emails",
        "100",
        "--processes",
        "1",
        "--timeout",
        "240",
    )
    assert summary["mailboxes"] == 3000 and summary["due"] == summary["emails"] == 300
    assert summary["outbox"] == {"sent": 600}
    assert summary["emails_per_second"] > 0 and summary["bare_limit_emails_per_second"] > 0
    assert summary["ratio_to_bare_limit"] > 0 and summary["wall_seconds"] > 0
    assert set(summary["peak_rss_mb"]) == {"worker0 scan,notices:1", "worker1 mail:2"}
    assert len(summary["bare_limit_runs"]) == 3  # before the first day, and after each
    days = summary["days"]
    assert [day["date"] for day in days] == ["2027-01-11", "2027-01-12"]
    # The top-level figures are the last day's.
    for key in ("emails_per_second", "wall_seconds", "bare_limit_emails_per_second", "ratio_to_bare_limit"):
        assert summary[key] == days[-1][key]
    for day in days:
        assert day["emails"] == 300 and day["wall_seconds"] > 0 and day["ratio_to_bare_limit"] > 0
        assert day["postgres_cpu_ms_per_email"] > 0 and day["wal_bytes_per_email"] > 0
        # The day writes the ledger, the outbox and the schedule, and never a mailboxes row.
        assert {"notice_ledger", "outbox_messages", "mailbox_schedule"} <= set(day["hot_update_ratio"])
        assert day["table_writes"]["mailbox_schedule"]["n_tup_upd"] == 300
        assert day["table_writes"].get("mailboxes", {}).get("n_tup_upd", 0) == 0
    # Each day sent its own emails: one per mailbox of its due set, every one sent.
    assert _count(bench_database, "SELECT count(*) FROM notice_ledger") == 600
    for number, day in enumerate(days):
        assert (
            _count(
                bench_database,
                f"SELECT count(*) FROM notice_ledger l JOIN outbox_messages o ON o.id = l.outbox_message_id"
                f" WHERE l.business_date = '{day['date']}' AND o.status = 'sent'"
                f" AND l.mailbox_id BETWEEN {number * 300 + 1} AND {(number + 1) * 300}",
            )
            == 300
        )


def test_link_handler(bench_database):
    assert shutil.which("wrk"), "wrk is missing: scripts/install-bench-tools"
    summary = _run(
        "bench/link_handler.sh",
        "--mailboxes",
        "2000",
        "--links",
        "50",
        "--duration",
        "1s",
        "--rounds",
        "1",
        "--connections",
        "4",
        "--database-url",
        bench_database,
        "--app-port",
        str(_free_port()),
        "--baseline-port",
        str(_free_port()),
        "--read-floor-port",
        str(_free_port()),
    )
    assert summary["mailboxes"] == 2000 and summary["links"] == 50
    assert summary["errors"] == []
    for side in ("app", "baseline", "read_floor"):
        assert summary[side]["requests_per_second"] > 0
        assert summary[side]["rounds"][0]["non_2xx"] == summary[side]["rounds"][0]["socket_errors"] == 0
    assert summary["ratio"] == pytest.approx(
        summary["app"]["requests_per_second"] / summary["baseline"]["requests_per_second"], abs=0.002
    )
    assert summary["read_floor_ratio"] > 0 and summary["app_to_read_floor"] > 0
    assert summary["app_p99_ms"] > 0 and summary["app"]["db_cpu_ms_per_request"] > 0
