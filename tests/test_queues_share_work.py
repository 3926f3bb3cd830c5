"""Two Celery worker processes on the same Redis and PostgreSQL share a day's work, and no email goes twice.

Scaling out is running more workers on the queues (README, "Scaling out"):
the notice batches are claimed by row locks and the ledger's unique key, the
outbox by leases, so whichever worker takes a task, every notice is written
once and every email is sent once.  Worker A consumes ``scan,notices,mail``,
worker B ``notices,mail``; each runs one process, so each has its own SMTP
connection and its own share of the tasks.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

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

DAY = date(2027, 3, 31)
MAILBOXES = 90
HOLDERS = 60


def succeeded(log: Path, task: str) -> int:
    """How many ``task`` runs this worker's log reports as succeeded (text or JSON lines alike)."""
    return sum(1 for line in log.read_text(errors="replace").splitlines() if f"{task}[" in line and "succeeded" in line)


@pytest.fixture
def two_workers(tmp_path, database_url, smtp_server):
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    # Many small batches and relay batches, so both workers get some of each.
    env = worker_environment(tmp_path, database_url, smtp_server, scan_batch_size=3, relay_batch_size=2)
    workers = {
        "worker-a": start_celery_worker(env, tmp_path, name="worker-a", queues="scan,notices,mail", concurrency=1),
        "worker-b": start_celery_worker(env, tmp_path, name="worker-b", queues="notices,mail", concurrency=1),
    }
    yield workers
    for process in workers.values():
        stop_celery_worker(process)


def test_two_workers_share_the_notices_and_the_mail_and_send_each_email_once(
    session_factory, two_workers, smtp_server, tmp_path
):
    with session_factory() as session, session.begin():
        for number in range(MAILBOXES):
            make_mailbox(session, expires_on=DAY, reference_email=f"titolare{number % HOLDERS}@example.it")

    app = create_celery(make_settings(tmp_path, broker_url=TEST_REDIS_URL))
    # Both consume before the day starts, or the first one up could take everything.
    wait_until(
        lambda: len(app.control.inspect(timeout=1.0).active_queues() or {}) == 2, timeout=60, what="both workers"
    )
    app.send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])

    def settled():
        with session_factory() as session:
            pending = session.scalar(select(func.count()).where(OutboxMessage.status == "pending"))
            ledger = session.scalar(select(func.count()).select_from(NoticeLedgerEntry))
            return ledger == MAILBOXES and pending == 0 and session.get(DailyRun, DAY) is not None

    wait_until(settled, timeout=120, what="the day to be done")

    with session_factory() as session:
        sent_ids = set(session.scalars(select(OutboxMessage.message_id).where(OutboxMessage.status == "sent")))
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == HOLDERS
    received = Counter(smtp_server.message_ids())
    assert [message_id for message_id, copies in received.items() if copies > 1] == []
    assert set(received) == sent_ids and len(sent_ids) == HOLDERS
    assert sorted(message.recipients[0] for message in smtp_server.messages) == sorted(
        f"titolare{number}@example.it" for number in range(HOLDERS)
    )

    for name, process in two_workers.items():
        assert process.poll() is None, f"{name} died"
        log = tmp_path / f"{name}.log"
        assert succeeded(log, "pec_renewal.notice_batch") >= 1, f"{name} wrote no notice batch"
        assert succeeded(log, "pec_renewal.deliver_outbox") >= 1, f"{name} delivered nothing"
    assert succeeded(tmp_path / "worker-a.log", "pec_renewal.daily_scan") == 1
    assert smtp_server.connections >= 2  # one SMTP connection per worker process
