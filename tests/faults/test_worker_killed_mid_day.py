"""A Celery worker SIGKILLed 20 times at random points of a 2,000-mailbox day, then the job run to completion.

Figure: 0 notices missing; each kill leaves at most 2 x 16 = 32 messages
received and not recorded ``sent`` (the worker's two pool processes each run
one relay, and a relay commits its outcomes every ``RELAY_OUTCOME_GROUP`` = 16
sends: the README's promise), so at most 20 x 32 = 640 duplicate emails over
the day, each one a message that landed in such a window; every duplicate
carries the same Message-ID as its first copy.

How the kills land.  A seeded random plan of 20 rounds: in each, the worker
(main and pool processes, one process group) is started, beat's periodic
sends are made (the day's scan, the relay), and after a random amount of work
it is killed:

* 10 rounds kill when the SMTP server has just written its ``250`` for a chosen
  message (``smtp_server.after_reply``): the client has the 250 and has not
  committed ``sent``;
* 10 rounds kill from the test after a random amount of progress (ledger rows
  written plus messages received), wherever the worker is: in a notice batch,
  rendering, in the SMTP dialogue, committing.

After each kill we wait for the killed connections to close (SMTP and
PostgreSQL), then count the messages that landed in the window: received by
the server in this round and still not ``sent`` in the database.  That count
is bounded per kill by a fixed figure, not by anything measured in the run: a
relay that committed less often would land more in each window.  The next
round's worker starts two hours later on its own clock (tests/faults/celery_at.py),
so the claim leases of the killed relay have run out and Redis hands back the
killed worker's unacknowledged tasks, as after a real restart.  At the end a
worker runs the day out, and ``run_day`` (``pec-renewal run-daily --date``,
the runbook for a failed day) finds nothing left to do.
"""

from __future__ import annotations

import random
import threading
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import func, select

from tests.support.celery_process import worker_environment
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    database_quiet,
    duplicates,
    outbox_status,
    queues_idle,
    received_ids,
    recipients_with_two_message_ids,
    seed_mailboxes,
    sent_message_ids,
    wait_until,
)
from tests.support.settings import make_settings
from worker.rules.schedule import add_months
from worker.services.daily import run_day
from worker.services.runtime import Runtime
from worker.store.models import NoticeLedgerEntry, OutboxMessage

pytestmark = pytest.mark.slow

ROME = ZoneInfo("Europe/Rome")
DAY = date(2027, 4, 15)
EXPIRES = add_months(DAY, 1)  # the -1m notice is due on DAY
MAILBOXES = 2_000
KILLS = 20
SEED = 20270415
#: The worker's pool processes: each runs one task at a time (prefork), so at most this many relays are killed at once.
RELAY_PROCESSES = 2
#: ``PEC_RENEWAL_RELAY_OUTCOME_GROUP``, the README's bound on what one killed relay sends again.
RELAY_OUTCOME_GROUP = 16
#: What one kill may leave sent and not recorded: every relay killed at once, each with a full group.
LANDED_PER_KILL = RELAY_PROCESSES * RELAY_OUTCOME_GROUP


def kill_plan(seed: int) -> list[tuple[str, int]]:
    """20 rounds, in random order: ("after-250", nth message this round) or ("progress", units this round)."""
    rng = random.Random(seed)
    plan = [("after-250", rng.randint(5, 80)) for _ in range(KILLS // 2)]
    plan += [("progress", rng.randint(10, 200)) for _ in range(KILLS - KILLS // 2)]
    rng.shuffle(plan)
    return plan


def test_sigkill_twenty_times_then_run_to_completion(
    session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
):
    seed_mailboxes(session_factory, MAILBOXES, expires_on=EXPIRES, next_action_on=DAY)
    env = worker_environment(
        tmp_path, database_url, smtp_server, scan_batch_size=100, relay_outcome_group=RELAY_OUTCOME_GROUP
    )
    worker = CeleryWorker(env, tmp_path, queues="scan,notices,mail", concurrency=RELAY_PROCESSES)
    workers.append(worker)
    beat = celery_client(tmp_path)
    clock = datetime.combine(DAY, time(6, 0), tzinfo=ROME)

    def ledger_rows() -> int:
        with session_factory() as session:
            return session.scalar(select(func.count()).select_from(NoticeLedgerEntry))

    # The SMTP server kills the worker when the armed message has had its 250.
    armed: dict[str, int] = {}
    hook_kills = threading.Event()

    def kill_after_250(index: int, _message) -> None:
        if armed.get("index") is not None and index >= armed["index"] and worker.running:
            armed["index"] = None
            worker.kill()
            hook_kills.set()

    smtp_server.after_reply = kill_after_250

    landed_in_window = 0
    kinds = []
    #: Message-ID -> (round, copies received in it, recorded sent at its end) for each round it was received in.
    history: dict[str, list[tuple[int, int, bool]]] = {}
    for kind, amount in kill_plan(SEED):
        received_before = received_ids(smtp_server)
        progress_before = ledger_rows() + len(smtp_server.messages)
        hook_kills.clear()
        if kind == "after-250":
            armed["index"] = len(smtp_server.messages) + amount - 1
        worker.start(clock)
        beat.send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])  # beat's hourly firing
        beat.send_task("pec_renewal.relay_outbox")  # beat's minutely relay
        if kind == "after-250":
            wait_until(hook_kills.is_set, timeout=60, what=f"message {armed['index']} to be accepted")
        else:
            wait_until(
                lambda before=progress_before, amount=amount: (
                    ledger_rows() + len(smtp_server.messages) - before >= amount
                ),
                timeout=60,
                what=f"{amount} units of progress",
            )
            worker.kill()
        assert not worker.running
        wait_until(lambda: smtp_server.open_sessions() == 0, timeout=10, what="the killed SMTP sessions to close")
        wait_until(lambda: database_quiet(session_factory), timeout=10, what="the killed transactions to end")
        received_now = received_ids(smtp_server)
        sent = sent_message_ids(session_factory)
        landed = sum(
            1
            for message_id, copies in received_now.items()
            if copies > received_before[message_id] and message_id not in sent
        )
        landed_in_window += landed
        for message_id, copies in received_now.items():
            if copies > received_before[message_id]:
                history.setdefault(message_id, []).append(
                    (len(kinds), copies - received_before[message_id], message_id in sent)
                )
        kinds.append((kind, amount, landed))
        clock += timedelta(hours=2)
    over = [(kind, amount, landed) for kind, amount, landed in kinds if landed > LANDED_PER_KILL]
    assert over == [], f"kills that left more than {LANDED_PER_KILL} messages sent and not recorded: {over}"

    # The day runs out under a worker that is not killed.
    armed["index"] = None
    worker.start(clock)
    beat.send_task("pec_renewal.daily_scan", args=[DAY.isoformat()])
    beat.send_task("pec_renewal.relay_outbox")
    wait_until(
        lambda: outbox_status(session_factory).get("sent", 0) == MAILBOXES and queues_idle(flushed_redis),
        timeout=120,
        what=f"{MAILBOXES} notices sent",
    )
    worker.kill()  # idle: nothing is lost, and a warm stop takes seconds

    # pec-renewal run-daily for the day, as the runbook says after a failed day: nothing is left.
    runtime = Runtime(
        make_settings(
            tmp_path,
            database_url=database_url,
            mail_backend="smtp",
            smtp_host=smtp_server.host,
            smtp_port=smtp_server.port,
        )
    )
    try:
        with time_machine.travel(clock + timedelta(hours=1), tick=False):
            summary = run_day(runtime, DAY)
    finally:
        runtime.close()
    assert summary.scan.examined == 0 and summary.delivery.sent == 0, summary.as_dict()

    with session_factory() as session:
        expected = set(session.scalars(select(OutboxMessage.message_id)))
        assert session.scalar(select(func.count()).select_from(NoticeLedgerEntry)) == MAILBOXES
    received = received_ids(smtp_server)
    missing = expected - set(received)
    print(f"kills: {kinds}; landed between 250 and commit: {landed_in_window}; duplicates: {duplicates(smtp_server)}")
    assert len(expected) == MAILBOXES
    assert missing == set(), f"{len(missing)} notices missing"
    assert set(received) == expected  # nothing but the day's notices
    assert duplicates(smtp_server) <= KILLS * LANDED_PER_KILL, kinds
    # Each duplicate was sent in a kill's window: a message has no more copies than one, plus one
    # for each round that ended with it received and not recorded sent.
    unexplained = {
        message_id: history.get(message_id)
        for message_id, copies in received.items()
        if copies - 1 > sum(1 for _, _, was_sent in history.get(message_id, []) if not was_sent)
    }
    assert unexplained == {}, f"copies not sent in a kill's window (round, copies, sent): {unexplained}; {kinds}"
    assert duplicates(smtp_server) <= landed_in_window, kinds
    assert recipients_with_two_message_ids(smtp_server) == {}
    assert landed_in_window >= 1, f"no kill landed between the 250 and the commit: {kinds}"
