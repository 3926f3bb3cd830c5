"""The job on the daylight-saving change days of 2027 and around 29 February 2028.

Figure: one scan per business date (the first hourly beat tick of the date
claims it, every later tick finds it claimed, and across the change no
tick claims the day before or after), and the right stages on the right
dates: notices due on 28 March and 31 October 2027 (Europe/Rome changes its
offset those nights), and expiries whose stages clamp onto 29 February 2028
(2028-05-29, -30 and -31 give -3m on 29 February; 2028-02-29 itself), with
auto-renew charges falling on 28 March 2027 and 29 February 2028.

The scan is scheduled at 00:30 here (``DAILY_SCAN_AT``), so beat's hourly
ticks (00:30 to 23:30, Rome time) run through the night of the change: 23 on
28 March, 25 on 31 October (02:30 comes twice).  Each tick is a moment in
UTC; time-machine puts this process there and the tick's work runs as eager
Celery tasks (a worker process adds nothing to the calendar).  The first
tick of 31 October, at 00:30 CEST (22:30 UTC the day before), goes to a real
Celery worker instead, started with its clock at that moment
(tests/faults/celery_at.py): it must claim 31 October, not 30.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from celery import Celery, _state
from sqlalchemy import select

from config.celery import celery_config
from tasks.daily import run_daily_scan
from tests.support.celery_process import worker_environment
from tests.support.factories import make_mailbox
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    gateway_charges_per_cycle,
    mark_charge_notices_sent,
    outbox_status,
    queues_idle,
    received_ids,
    wait_until,
)
from tests.support.settings import make_settings
from worker.rules.schedule import DEFAULT_STAGES, next_action_on
from worker.services import runtime as runtime_module
from worker.services.notices import SCHEDULE_STATE_KEY
from worker.services.runtime import Runtime
from worker.store.models import ChargeIntent, DailyRun, Mailbox, NoticeLedgerEntry, OutboxMessage, WorkerState

pytestmark = pytest.mark.slow

ROME = ZoneInfo("Europe/Rome")
BLOCKS = [
    [date(2027, 3, 27), date(2027, 3, 28), date(2027, 3, 29)],
    [date(2027, 10, 30), date(2027, 10, 31), date(2027, 11, 1)],
    [date(2028, 2, 27), date(2028, 2, 28), date(2028, 2, 29), date(2028, 3, 1), date(2028, 3, 2)],
]
WORKER_TICK = datetime(2027, 10, 30, 22, 30, tzinfo=UTC)  # 00:30 CEST on 31 October

#: Manual mailboxes by expiry -> the (stage, business date) notices expected inside the blocks.
EXPECTED = {
    date(2027, 3, 28): [("-1d", date(2027, 3, 27)), ("0d", date(2027, 3, 28)), ("+1d", date(2027, 3, 29))],
    date(2027, 4, 28): [("-1m", date(2027, 3, 28))],
    date(2027, 10, 31): [("-1d", date(2027, 10, 30)), ("0d", date(2027, 10, 31)), ("+1d", date(2027, 11, 1))],
    date(2027, 11, 1): [("-1d", date(2027, 10, 31)), ("0d", date(2027, 11, 1))],
    date(2027, 11, 30): [("-1m", date(2027, 10, 30))],
    date(2027, 12, 31): [("-2m", date(2027, 10, 31))],
    date(2028, 2, 28): [("-1d", date(2028, 2, 27)), ("0d", date(2028, 2, 28)), ("+1d", date(2028, 2, 29))],
    date(2028, 2, 29): [("-1d", date(2028, 2, 28)), ("0d", date(2028, 2, 29)), ("+1d", date(2028, 3, 1))],
    date(2028, 3, 1): [("-1d", date(2028, 2, 29)), ("0d", date(2028, 3, 1)), ("+1d", date(2028, 3, 2))],
    date(2028, 3, 29): [("-1m", date(2028, 2, 29))],
    date(2028, 5, 29): [("-3m", date(2028, 2, 29))],
    date(2028, 5, 30): [("-3m", date(2028, 2, 29))],
    date(2028, 5, 31): [("-3m", date(2028, 2, 29))],
}
#: Auto-renew mailboxes by expiry -> (charge date, new expiry).
CHARGES = {
    date(2027, 4, 4): (date(2027, 3, 28), date(2028, 4, 4)),
    date(2028, 3, 7): (date(2028, 2, 29), date(2029, 3, 7)),
}


def ticks(day: date) -> Iterator[datetime]:
    """Beat's hourly firings for ``day`` (00:30 to 23:30 Rome time), as UTC instants."""
    start = datetime.combine(day, time(0, 30), tzinfo=ROME).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0, 30), tzinfo=ROME).astimezone(UTC)
    while start < end:
        yield start
        start += timedelta(hours=1)


def test_ticks_across_daylight_saving_and_29_february_scan_each_date_once_with_the_right_stages(
    session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
):
    assert len(list(ticks(date(2027, 3, 28)))) == 23 and len(list(ticks(date(2027, 10, 31)))) == 25
    manual = {}
    own_block = {}  # the block each manual mailbox is checked in (between blocks no day is scanned)
    with session_factory() as session, session.begin():
        for expires_on in EXPECTED:
            block = next(b for b in BLOCKS if b[0] - timedelta(days=92) <= expires_on <= b[-1] + timedelta(days=92))
            mailbox = make_mailbox(session, expires_on=expires_on)
            # As if the days before the block had run: the next stage after the day before it.
            mailbox.next_action_on = next_action_on(DEFAULT_STAGES, expires_on, block[0] - timedelta(days=1))
            manual[mailbox.id] = expires_on
            own_block[mailbox.id] = block
        auto = {}
        for expires_on, (charge_on, _renewed) in CHARGES.items():
            mailbox = make_mailbox(session, expires_on=expires_on, card=True)
            mailbox.next_action_on = charge_on - timedelta(days=1)
            auto[mailbox.id] = expires_on
        # The schedule in force is the one the dates above were computed with (no reconcile moves them).
        session.add(WorkerState(key=SCHEDULE_STATE_KEY, value=",".join(stage.name for stage in DEFAULT_STAGES)))
    for mailbox_id, expires_on in auto.items():
        mark_charge_notices_sent(session_factory, [mailbox_id], expires_on)

    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        daily_scan_at="00:30",
    )
    rt = Runtime(settings)
    app = Celery("pec_renewal", include=["tasks.daily", "tasks.mail", "tasks.charges"])
    app.conf.update(celery_config(settings), task_always_eager=True, task_eager_propagates=True)
    previous_app = _state.get_current_app()
    app.set_current()
    runtime_module.install(rt)

    first_tick: dict[date, datetime] = {}
    try:
        for block in BLOCKS:
            for day in block:
                for tick in ticks(day):
                    first_tick.setdefault(day, tick)
                    if tick == WORKER_TICK:
                        run_tick_under_a_real_worker(
                            tick, session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
                        )
                        continue
                    with time_machine.travel(tick, tick=False):
                        run_daily_scan()  # beat sends no date: the task takes today in Europe/Rome
    finally:
        runtime_module.install(None)
        previous_app.set_current()

    with session_factory() as session:
        runs = {run.business_date: run for run in session.scalars(select(DailyRun))}
        ledger = session.execute(
            select(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.stage, NoticeLedgerEntry.business_date).where(
                NoticeLedgerEntry.mailbox_id.in_(list(manual))
            )
        ).all()
        intents = session.execute(
            select(ChargeIntent.mailbox_id, ChargeIntent.business_date, ChargeIntent.status)
        ).all()
        expiries = {m.id: m.expires_on for m in session.scalars(select(Mailbox).where(Mailbox.id.in_(list(auto))))}
        outbox = set(session.scalars(select(OutboxMessage.message_id)))

    # One scan per date, claimed by its first tick and never again.
    assert sorted(runs) == [day for block in BLOCKS for day in block]
    # (the worker's clock ran on from its tick while it started up: its claim is seconds later)
    assert {day: run.started_at.replace(second=0, microsecond=0) for day, run in runs.items()} == first_tick
    assert all(run.finished_at is not None for run in runs.values())
    # The right stages on the right dates.
    assert sorted((manual[m], stage, on) for m, stage, on in ledger if on in own_block[m]) == sorted(
        (expires_on, stage, on) for expires_on, notices in EXPECTED.items() for stage, on in notices
    )
    assert sorted((auto[m], on, status) for m, on, status in intents) == sorted(
        (expires_on, charge_on, "succeeded") for expires_on, (charge_on, _renewed) in CHARGES.items()
    )
    assert {auto[m]: expiry for m, expiry in expiries.items()} == {e: renewed for e, (_on, renewed) in CHARGES.items()}
    assert set(gateway_charges_per_cycle(session_factory).values()) == {1}
    received = received_ids(smtp_server)
    assert set(received) == outbox and set(received.values()) == {1}
    assert outbox_status(session_factory).get("pending", 0) == 0


def run_tick_under_a_real_worker(tick, session_factory, database_url, smtp_server, redis_client, workers, tmp_path):
    """Beat's first firing of 31 October (two beats), to a worker whose clock reads 00:30 CEST."""
    worker = CeleryWorker(
        worker_environment(tmp_path, database_url, smtp_server, daily_scan_at="00:30"),
        tmp_path,
        queues="scan,notices,mail,charges",
        name="dst-worker",
    )
    workers.append(worker)
    worker.start(tick)
    beat = celery_client(tmp_path)
    beat.send_task("pec_renewal.daily_scan")
    beat.send_task("pec_renewal.daily_scan")

    def scanned() -> bool:
        with session_factory() as session:
            run = session.get(DailyRun, date(2027, 10, 31))
        return (
            run is not None
            and run.finished_at is not None
            and queues_idle(redis_client)
            and not outbox_status(session_factory).get("pending")
        )

    wait_until(scanned, timeout=60, what="the worker's scan of 31 October")
    worker.kill()  # idle: nothing is lost, and a warm stop takes seconds
    with session_factory() as session:
        assert session.get(DailyRun, date(2027, 10, 30)).finished_at < tick  # the day before was not claimed again
