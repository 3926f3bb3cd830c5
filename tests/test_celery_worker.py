"""The daily scan under a real Celery worker process consuming from the real Redis."""

from __future__ import annotations

from datetime import date

import pytest
import redis
from sqlalchemy import func, select

from tests.support.celery_process import start_celery_worker, stop_celery_worker, worker_environment
from tests.support.factories import make_mailbox
from tests.support.settings import TEST_REDIS_URL, make_settings
from tests.support.waiting import wait_until
from worker.celery_setup import create_celery
from worker.store.models import DailyRun, NoticeLedgerEntry, OutboxMessage

pytestmark = pytest.mark.slow


@pytest.fixture
def worker_env(tmp_path, database_url, smtp_server):
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    return worker_environment(tmp_path, database_url, smtp_server, scan_batch_size=7)


@pytest.fixture
def celery_worker_process(worker_env, tmp_path):
    process = start_celery_worker(worker_env, tmp_path)
    yield process
    stop_celery_worker(process)


def test_daily_scan_fans_out_in_batches_and_delivers_once(
    session_factory, worker_env, celery_worker_process, smtp_server, tmp_path
):
    with session_factory() as session, session.begin():
        for number in range(40):
            make_mailbox(session, expires_on=date(2027, 3, 31), reference_email=f"titolare{number % 25}@example.it")

    app = create_celery(make_settings(tmp_path, broker_url=TEST_REDIS_URL))
    # Two beats firing the same date: the second finds it claimed.
    app.send_task("pec_renewal.daily_scan", args=["2027-03-31"])
    app.send_task("pec_renewal.daily_scan", args=["2027-03-31"])

    wait_until(lambda: len(smtp_server.messages) >= 25, timeout=90, what="25 emails")

    def settled():
        with session_factory() as session:
            pending = session.scalar(select(func.count()).where(OutboxMessage.status == "pending"))
            return pending == 0 and session.get(DailyRun, date(2027, 3, 31)) is not None

    wait_until(settled, timeout=30, what="the outbox to drain")
    assert sorted(m.recipients[0] for m in smtp_server.messages) == sorted(
        f"titolare{number}@example.it" for number in range(25)
    )
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(NoticeLedgerEntry)) == 40
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 25
        assert session.get(DailyRun, date(2027, 3, 31)).summary["batches"] >= 4
    assert celery_worker_process.poll() is None, "the worker died"


def test_beat_starts_where_var_dir_does_not_exist_yet(tmp_path, database_url):
    """With SECRET_KEYS set nothing else creates VAR_DIR: beat makes the folder of its schedule file."""
    import subprocess
    import sys

    var_dir = tmp_path / "not" / "yet" / "var"
    env = worker_environment(tmp_path, database_url, var_dir=var_dir)
    log_path = tmp_path / "beat.log"
    with open(log_path, "w") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel=INFO"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: beat.poll() is not None or any(var_dir.glob("celerybeat-schedule*")),
            timeout=60,
            what="beat to write its schedule",
        )
        assert beat.poll() is None, log_path.read_text()
        assert any(var_dir.glob("celerybeat-schedule*"))
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert "Traceback" not in log_path.read_text()


def test_every_task_retries_when_the_database_is_unreachable_through_sqlalchemy_or_psycopg(tmp_path, database_url):
    """A dropped connection raises SQLAlchemy's OperationalError, or psycopg's own where the bulk load's
    COPY uses the driver directly: every task retries on both."""
    import psycopg
    import sqlalchemy.exc

    app = create_celery(make_settings(tmp_path, database_url=database_url))
    app.loader.import_default_modules()  # the tasks, as a worker imports them at start-up
    names = sorted(name for name in app.tasks if name.startswith("pec_renewal."))
    assert len(names) >= 6, names
    for name in names:
        retried = app.tasks[name].autoretry_for
        assert sqlalchemy.exc.OperationalError in retried and psycopg.OperationalError in retried, name
