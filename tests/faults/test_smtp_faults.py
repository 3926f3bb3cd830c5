"""SMTP answers 451, then 550, or hangs up after DATA; SMTP down for an hour.

Figure: the 451 and the hang-up, and everything due while the server is down,
are retried and delivered later (exactly once on the server that comes back);
the 550 is bounced, never retried, and counted: in ``bounced_addresses`` and
in the run's result (``pec-renewal run-daily``'s ``bounced``).

The day's first attempts run under a real Celery worker (one pool process,
so the scripted replies meet the messages in order).  The retries need the
clock to pass the backoff (1, 2, 4 … minutes) and an hour of outage: they run
in this process, ``OutboxRelay`` with time-machine moving its clock, minute by
minute, as beat's minutely relay would.  "Down" is the server's port with
nothing listening; "back" is a new server on the same port.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import time_machine
from sqlalchemy import select

from tests.support.celery_process import worker_environment
from tests.support.charges import at_morning
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    outbox_status,
    queues_idle,
    seed_mailboxes,
    wait_until,
)
from tests.support.settings import make_settings
from tests.support.smtp_server import LoopbackSMTPServer
from worker.rules.schedule import add_months
from worker.services.daily import run_day
from worker.services.runtime import Runtime
from worker.store.models import BouncedAddress, OutboxMessage

pytestmark = pytest.mark.slow

DAY = date(2027, 4, 15)
NEXT_DAY = DAY + timedelta(days=1)


def messages(session_factory) -> dict[str, OutboxMessage]:
    with session_factory() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        session.expunge_all()
    return {row.to_address: row for row in rows}


def test_451_and_hang_up_and_an_hour_down_are_delivered_later_550_is_bounced_once(
    session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
):
    seed_mailboxes(session_factory, 5, expires_on=add_months(DAY, 1), next_action_on=DAY)
    smtp_server.fail_next("451 4.3.0 Try again later")  # RCPT TO of the first message
    smtp_server.fail_next("550 5.1.1 Mailbox unavailable")  # RCPT TO of the second
    smtp_server.disconnect_after_data_next()  # the third is read whole, then the line drops
    worker = CeleryWorker(
        worker_environment(tmp_path, database_url, smtp_server), tmp_path, queues="scan,notices,mail", concurrency=1
    )
    workers.append(worker)
    start = at_morning(DAY)
    worker.start(start)
    celery_client(tmp_path).send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])

    def all_tried() -> bool:
        rows = messages(session_factory).values()
        return len(rows) == 5 and all(row.attempts >= 1 for row in rows) and queues_idle(flushed_redis)

    wait_until(all_tried, timeout=60, what="the first attempt at every message")
    worker.kill()  # idle: nothing is lost, and a warm stop takes seconds
    first = list(messages(session_factory).values())
    assert [row.status for row in first] == ["pending", "bounced", "pending", "sent", "sent"], [
        (row.status, row.last_error) for row in first
    ]
    deferred, bounced = [first[0], first[2]], first[1]
    assert "451" in deferred[0].last_error and bounced.last_error.startswith("recipient refused: 550")
    assert len(smtp_server.messages) == 2

    # SMTP goes down for an hour: beat's relay runs every minute and finds nobody listening.
    port = smtp_server.port
    smtp_server.stop()
    runtime = Runtime(
        make_settings(
            tmp_path,
            database_url=database_url,
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_timeout=5,
        )
    )
    back = LoopbackSMTPServer(port=port)
    try:
        during_outage = []
        for minute in range(1, 61):
            with time_machine.travel(start + timedelta(minutes=minute), tick=False):
                during_outage.append(runtime.relay.deliver_due())
        assert sum(result.sent for result in during_outage) == 0
        # Retried with backoff: each message's first retry comes a minute after its first attempt
        # (made seconds after ``start``), then 2, 4, 8 and 16 minutes later: 5 tries each in the hour.
        assert sum(result.deferred for result in during_outage) == 2 * 5
        assert outbox_status(session_factory)["pending"] == 2

        back.start()
        sent_after = None
        for minute in range(61, 61 + 130):
            with time_machine.travel(start + timedelta(minutes=minute), tick=False):
                if runtime.relay.deliver_due().sent:
                    sent_after = sent_after or minute
            if outbox_status(session_factory)["pending"] == 0:
                break
        now = messages(session_factory)
        assert [now[row.to_address].status for row in deferred] == ["sent", "sent"]
        assert sorted(m.recipients[0] for m in back.messages) == sorted(row.to_address for row in deferred)
        assert sorted(back.message_ids()) == sorted(row.message_id for row in deferred)
        # The first, the five in the outage, and the one 32 minutes after the fifth, which is sent.
        assert [now[row.to_address].attempts for row in deferred] == [7, 7]
        # The 550 was never tried again, and is counted once.
        assert now[bounced.to_address].status == "bounced" and now[bounced.to_address].attempts == 1
        with session_factory() as session:
            (record,) = session.scalars(select(BouncedAddress)).all()
        assert (record.address, record.bounces) == (bounced.to_address, 1)

        # The next day's run (pec-renewal run-daily) meets a 550 too: its result counts it.
        (refused,) = seed_mailboxes(
            session_factory, 1, expires_on=add_months(NEXT_DAY, 1), next_action_on=NEXT_DAY, prefix="rifiutato"
        )
        back.fail_next("550 5.1.1 Mailbox unavailable")
        with time_machine.travel(at_morning(NEXT_DAY), tick=False):
            summary = run_day(runtime, NEXT_DAY)
        assert (summary.delivery.sent, summary.delivery.bounced, summary.as_dict()["bounced"]) == (0, 1, 1)
        with session_factory() as session:
            assert session.scalar(select(BouncedAddress.bounces).where(BouncedAddress.address.like("rifiutato%"))) == 1
        assert len(back.messages) == 2
    finally:
        runtime.close()
        back.stop()
