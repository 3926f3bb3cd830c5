"""The gateway times out after the charge was made: reconciled, never charged a second time.

Figure: every charge whose answer was lost (``pm_sandbox_timeout``: the
sandbox records the charge, then the answer never arrives) is reconciled
with ``gateway.lookup``; exactly one charge per (mailbox, cycle) in the
gateway's own table, and one receipt each.

The worker asks the gateway at once after a lost answer.  To reach the
harder path, the charge day's worker cannot reach the gateway to ask either
(``PEC_RENEWAL_TEST_LOOKUPS_LOST``, tests/faults/celery_at.py): the intents
stay ``unknown``, and the next day's sweep, on a worker that can ask, settles them.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from tests.support.celery_process import worker_environment
from tests.support.charges import CHARGE_DAY, EXPIRES, at_morning
from tests.support.faults import (
    CeleryWorker,
    celery_client,
    charge_intents,
    gateway_charges_per_cycle,
    mark_charge_notices_sent,
    queues_idle,
    seed_mailboxes,
    wait_until,
)
from worker.store.models import Mailbox

pytestmark = pytest.mark.slow

LOST = 20
ANSWERED = 20


def test_lost_answers_are_reconciled_by_the_next_sweep_never_charged_again(
    session_factory, database_url, smtp_server, flushed_redis, workers, tmp_path
):
    lost = seed_mailboxes(
        session_factory,
        LOST,
        expires_on=EXPIRES,
        next_action_on=CHARGE_DAY,
        auto_renew=True,
        payment_method="pm_sandbox_timeout",
        prefix="perso",
    )
    answered = seed_mailboxes(
        session_factory,
        ANSWERED,
        expires_on=EXPIRES,
        next_action_on=CHARGE_DAY,
        auto_renew=True,
        payment_method="pm_card_visa",
        prefix="risposto",
    )
    mark_charge_notices_sent(session_factory, lost + answered, EXPIRES)
    env = worker_environment(tmp_path, database_url, smtp_server)
    worker = CeleryWorker(
        {**env, "PEC_RENEWAL_TEST_LOOKUPS_LOST": "1"}, tmp_path, queues="scan,charges,mail", name="charge-day"
    )
    workers.append(worker)
    worker.start(at_morning(CHARGE_DAY))
    beat = celery_client(tmp_path)

    beat.send_task("pec_renewal.charge_sweep", args=[CHARGE_DAY.isoformat()])
    beat.send_task("pec_renewal.charge_sweep", args=[CHARGE_DAY.isoformat()])  # a second beat
    wait_until(
        lambda: charge_intents(session_factory) == {"unknown": LOST, "succeeded": ANSWERED},
        timeout=60,
        what="the charge day's outcomes",
    )
    wait_until(lambda: queues_idle(flushed_redis), timeout=30, what="the charge day's work to finish")
    assert sum(gateway_charges_per_cycle(session_factory).values()) == LOST + ANSWERED  # the money moved
    with session_factory() as session:
        assert {m.expires_on for m in session.scalars(select(Mailbox).where(Mailbox.id.in_(lost)))} == {EXPIRES}

    # The 15-minute sweep fires again the same day: the unknown charges are claimed, nothing is retried.
    beat.send_task("pec_renewal.charge_sweep", args=[CHARGE_DAY.isoformat()])
    wait_until(lambda: queues_idle(flushed_redis), timeout=30, what="the sweep to finish")
    assert charge_intents(session_factory) == {"unknown": LOST, "succeeded": ANSWERED}

    assert len(smtp_server.messages) == ANSWERED  # receipts only for the answered charges
    worker.kill()  # idle: nothing is lost, and a warm stop takes seconds

    worker = CeleryWorker(env, tmp_path, queues="scan,charges,mail", name="next-day")
    workers.append(worker)
    worker.start(at_morning(CHARGE_DAY + timedelta(days=1)))
    beat.send_task("pec_renewal.charge_sweep", args=[(CHARGE_DAY + timedelta(days=1)).isoformat()])
    wait_until(
        lambda: charge_intents(session_factory) == {"succeeded": LOST + ANSWERED},
        timeout=60,
        what="the next day's reconciliation",
    )
    wait_until(lambda: len(smtp_server.messages) >= LOST + ANSWERED, timeout=30, what="the receipts")
    wait_until(lambda: queues_idle(flushed_redis), timeout=30, what="the worker to finish")

    per_cycle = gateway_charges_per_cycle(session_factory)
    assert len(per_cycle) == LOST + ANSWERED and set(per_cycle.values()) == {1}
    with session_factory() as session:
        assert {m.expires_on for m in session.scalars(select(Mailbox))} == {date(2028, 3, 31)}
    assert len(smtp_server.messages) == LOST + ANSWERED
    assert len(set(smtp_server.message_ids())) == LOST + ANSWERED
    assert worker.running, worker.log()
