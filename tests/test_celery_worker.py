"""The daily scan under a real Celery worker process consuming from the real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date

import pytest
import redis
from sqlalchemy import func, select

from tests.conftest import TEST_REDIS_URL, TEST_SECRET_KEYS, make_settings
from tests.factories import make_mailbox
from worker.celery_app import create_celery
from worker.models import DailyRun, NoticeLedgerEntry, OutboxMessage

pytestmark = pytest.mark.slow


def wait_until(predicate, *, timeout: float, what: str):
    """Wait for another process to get something done (this moves no clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def worker_env(tmp_path, database_url, smtp_server):
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    return {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_BROKER_URL": TEST_REDIS_URL,
        "PEC_RENEWAL_MAIL_BACKEND": "smtp",
        "PEC_RENEWAL_SMTP_HOST": smtp_server.host,
        "PEC_RENEWAL_SMTP_PORT": str(smtp_server.port),
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_MAIL_FROM": "Rinnovi PEC <rinnovi@pec-provider.example>",
        "PEC_RENEWAL_SCAN_BATCH_SIZE": "7",
    }


@pytest.fixture
def celery_worker_process(worker_env, tmp_path):
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--concurrency=2", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel=INFO",
        ],
        env={**os.environ, **worker_env},
        cwd=tmp_path,
        stdout=open(tmp_path / "worker.log", "w"),
        stderr=subprocess.STDOUT,
    )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
