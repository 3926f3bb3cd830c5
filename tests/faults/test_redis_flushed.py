"""Redis loses every message in the middle of the day's scan.

Figure: everything due is delivered by the next run, the same day: every due
mailbox gets its notice exactly once (ledger and emails received, by
Message-ID), though the day's notice batches and deliveries queued in Redis
were lost.  The notice is the expiry day's (``0d``): had the lost batches
waited for the next day's scan, ``+1d`` would have passed over it for good.

The shared Redis server cannot be restarted here (other suites use it); a
restart without persistence loses the queued and unacknowledged messages,
which is exactly what FLUSHDB of our DB does, so that is the fault injected.
The ledger rows already written are delivered by beat's minutely relay; the
lost notice batches are queued again by beat's next hourly firing of the
scan, which finds the date scanned more than half an hour ago with mailboxes
still due (the worker is restarted an hour later to be that firing).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from tests.support.celery_process import worker_environment
from tests.support.charges import at_morning
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    outbox_status,
    queues_idle,
    received_ids,
    seed_mailboxes,
    wait_until,
)
from worker.store.models import DailyRun, NoticeLedgerEntry, OutboxMessage

pytestmark = pytest.mark.slow

DAY = date(2027, 4, 15)
MAILBOXES = 300


def test_redis_flushed_mid_scan_everything_due_is_delivered_by_the_next_run(
    session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
):
    seed_mailboxes(session_factory, MAILBOXES, expires_on=DAY, next_action_on=DAY)
    env = worker_environment(tmp_path, database_url, smtp_server, scan_batch_size=10)
    worker = CeleryWorker(env, tmp_path, queues="scan,notices,mail", concurrency=1)
    workers.append(worker)
    worker.start(at_morning(DAY))
    beat = celery_client(tmp_path)

    def ledger_rows() -> int:
        with session_factory() as session:
            return session.scalar(select(func.count()).select_from(NoticeLedgerEntry))

    beat.send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])
    wait_until(lambda: ledger_rows() >= 30, timeout=60, what="the scan to be under way")
    flushed_redis.flushdb()  # Redis comes back empty
    written = ledger_rows()
    assert written < MAILBOXES, "the scan finished before the flush: nothing was lost"

    # Minutes later: beat's relay delivers what the ledger holds; a firing of
    # the scan this soon leaves the date alone (its batches may only be slow).
    beat.send_task("pec_renewal.relay_outbox")
    beat.send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])
    wait_until(
        lambda: queues_idle(flushed_redis) and outbox_status(session_factory)["pending"] == 0,
        timeout=60,
        what="the relay to drain the outbox",
    )
    before_the_hour = ledger_rows()
    assert before_the_hour < MAILBOXES  # the lost batches are still due
    assert len(smtp_server.messages) == before_the_hour

    # An hour later, the same day: beat's next hourly firing queues the lost batches again.
    worker.stop()
    worker.start(at_morning(DAY) + timedelta(hours=1))
    beat.send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])
    wait_until(
        lambda: outbox_status(session_factory).get("sent", 0) == MAILBOXES and queues_idle(flushed_redis),
        timeout=60,
        what="every notice delivered",
    )

    with session_factory() as session:
        stages = session.execute(select(NoticeLedgerEntry.stage, func.count()).group_by(NoticeLedgerEntry.stage)).all()
        expected = set(session.scalars(select(OutboxMessage.message_id)))
        scans = session.scalars(select(DailyRun.business_date).order_by(DailyRun.business_date)).all()
    assert stages == [("0d", MAILBOXES)]
    received = received_ids(smtp_server)
    assert set(received) == expected and len(expected) == MAILBOXES
    assert set(received.values()) == {1}, "a notice was delivered twice"
    assert scans == [DAY], "one scan per business date"
    assert worker.running, worker.log()
    print(
        f"written before the flush: {written}; before the hour: {before_the_hour}; after the next firing: {MAILBOXES}"
    )
