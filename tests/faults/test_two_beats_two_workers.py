"""Two beats and two workers over 30 simulated days.

Figure: exactly one scan per business date (one finished ``daily_runs`` row
each, though both beats fire every date); exactly the notices the schedule
gives the fleet over the 30 days, each once (ledger keys, and emails received
by Message-ID), and 0 duplicate charges (per mailbox and cycle in the sandbox
gateway's own table).

Why not two ``celery beat`` processes: beat fires from the wall clock, so 30
days would take 30 days, or a time-travelled clock per beat; and the workers,
separate processes, keep their own clock anyway.  What beat sends is plain:
the day's ``pec_renewal.daily_scan`` (hourly, the first firing scans),
``pec_renewal.charge_sweep`` and ``pec_renewal.relay_outbox``.  So two
threads play the two beats: for each simulated date both send all three at
the same moment (a barrier), with the date explicit, as the tasks accept it,
and two real worker processes consume them.  The next date starts once the
workers have finished this one.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from tests.support.celery_process import worker_environment
from tests.support.charges import at_morning
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    charge_intents,
    gateway_charges_per_cycle,
    queues_idle,
    received_ids,
    seed_mailboxes,
    wait_until,
)
from worker.rules.schedule import parse_stages
from worker.store.models import DailyRun, NoticeLedgerEntry, OutboxMessage, OutboxStatus

pytestmark = pytest.mark.slow

FIRST_DAY = date(2027, 5, 3)
DAYS = 30
LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)
#: The notice schedule (``NOTICE_STAGES``'s default), written out: a stage the scan drops is missed here.
STAGES = parse_stages("-3m,-2m,-1m,-15d,-7d,-1d,0d,+1d,+30d,+60d,+83d")
#: The notices of the fleet below over the 30 days, by the two functions below: 153 for the 50
#: manual mailboxes (-3m 19, -2m 30, -1m 22, -15d 19, -7d 18, -1d 15, 0d 15, +1d 15; no mailbox
#: reaches +30d by the last day) and 35 for the 20 auto-renew ones (20 charge notices, 15 receipts).
EXPECTED_NOTICES = 188


def manual_notices(mailbox_id: int, expires_on: date) -> list[tuple[int, date, str]]:
    """The ledger keys of a manual mailbox scanned every day from FIRST_DAY to LAST_DAY.

    The first scan sends the most urgent stage already come (the earlier ones are
    superseded); then every stage falling inside the 30 days is sent on its date.
    """
    dated = sorted((stage.on(expires_on), stage.name) for stage in STAGES)
    come = [name for on, name in dated if on <= FIRST_DAY]
    later = [name for on, name in dated if FIRST_DAY < on <= LAST_DAY]
    return [(mailbox_id, expires_on, name) for name in come[-1:] + later]


def auto_renew_notices(mailbox_id: int, expires_on: date) -> list[tuple[int, date, str]]:
    """The charge notice (``-30d``, on the first day if that was earlier), and the receipt on
    the charge day (7 days before expiry: the manual stage ``-7d``) when it falls inside the 30 days."""
    keys = [(mailbox_id, expires_on, "-30d")]
    if expires_on - timedelta(days=7) <= LAST_DAY:
        keys.append((mailbox_id, expires_on, "-7d"))
    return keys


def test_two_beats_two_workers_thirty_days_one_scan_a_day_nothing_twice(
    session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
):
    expected_ledger = []
    for offset in range(0, 100, 2):  # manual mailboxes: a stage falls on most days
        expires = FIRST_DAY + timedelta(days=offset)
        (mailbox_id,) = seed_mailboxes(
            session_factory, 1, expires_on=expires, next_action_on=FIRST_DAY, prefix=f"manuale{offset}-"
        )
        expected_ledger += manual_notices(mailbox_id, expires)
    charged_in_window = {}  # auto-renew: charge notices, then charges 7 days before expiry
    for offset in range(0, 40, 2):
        expires = FIRST_DAY + timedelta(days=8 + offset)
        (mailbox_id,) = seed_mailboxes(
            session_factory,
            1,
            expires_on=expires,
            next_action_on=FIRST_DAY,
            auto_renew=True,
            payment_method="pm_card_visa",
            prefix=f"automatico{offset}-",
        )
        expected_ledger += auto_renew_notices(mailbox_id, expires)
        if expires - timedelta(days=7) <= LAST_DAY:
            charged_in_window[str(mailbox_id)] = expires.isoformat()
    env = worker_environment(tmp_path, database_url, smtp_server, scan_batch_size=10)
    for name in ("worker-a", "worker-b"):
        worker = CeleryWorker(env, tmp_path, queues="scan,notices,mail,charges", concurrency=1, name=name)
        workers.append(worker)
        worker.start(at_morning(FIRST_DAY))
    beats = [celery_client(tmp_path), celery_client(tmp_path)]

    def settled(day: date) -> bool:
        with session_factory() as session:
            run = session.get(DailyRun, day)
            pending = session.scalar(select(func.count()).where(OutboxMessage.status == OutboxStatus.PENDING.value))
        return (
            run is not None
            and run.finished_at is not None
            and pending == 0
            and queues_idle(flushed_redis)
            and not charge_intents(session_factory).get("started")
        )

    for day in (FIRST_DAY + timedelta(days=n) for n in range(DAYS)):
        barrier = threading.Barrier(len(beats))

        def fire(beat, day=day, barrier=barrier):
            barrier.wait()
            beat.send_task("pec_renewal.daily_scan", args=[day.isoformat()])
            beat.send_task("pec_renewal.charge_sweep", args=[day.isoformat()])
            beat.send_task("pec_renewal.relay_outbox")

        threads = [threading.Thread(target=fire, args=(beat,)) for beat in beats]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(lambda: settled(day), timeout=30, what=f"the workers to finish {day}")  # noqa: B023  (called in this iteration)

    with session_factory() as session:
        runs = session.scalars(select(DailyRun).order_by(DailyRun.business_date)).all()
        ledger = session.execute(
            select(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.cycle_expires_on, NoticeLedgerEntry.stage)
        ).all()
        sent = set(session.scalars(select(OutboxMessage.message_id).where(OutboxMessage.status == "sent")))
        outbox = session.scalar(select(func.count()).select_from(OutboxMessage))
    assert [run.business_date for run in runs] == [FIRST_DAY + timedelta(days=n) for n in range(DAYS)]
    assert all(run.finished_at is not None for run in runs)
    assert len(ledger) == len(set(ledger)) == len(expected_ledger) == EXPECTED_NOTICES
    assert sorted(ledger) == sorted(expected_ledger)
    received = received_ids(smtp_server)
    assert set(received) == sent and len(sent) == outbox, "a notice was lost or not sent"
    assert outbox == EXPECTED_NOTICES  # every holder has one mailbox: one email per notice
    duplicates = {message_id: copies for message_id, copies in received.items() if copies > 1}
    assert duplicates == {}
    per_cycle = gateway_charges_per_cycle(session_factory)
    assert per_cycle == Counter(charged_in_window.items()), per_cycle
    assert charge_intents(session_factory) == Counter(succeeded=len(charged_in_window))
    assert all(w.running for w in workers), [w.log() for w in workers]
    scans_taken = [w.log(tail=None).count("pec_renewal.daily_scan[") // 2 for w in workers]  # received, succeeded
    assert all(scans_taken), f"one worker took every scan: {scans_taken}"  # so the two really raced
    print(
        f"{len(ledger)} ledger rows, {len(sent)} emails, {sum(per_cycle.values())} charges; "
        f"daily_scan tasks taken by each worker: {scans_taken}"
    )
