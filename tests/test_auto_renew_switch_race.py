"""The auto-renew switch against a charge run by a real Celery worker: one charge or none, never stuck.

The worker charges three mailboxes one after the other (``GATEWAY_CONCURRENCY=1``), each gateway
call taking 1.5 seconds (``SANDBOX_LATENCY_MS``), while the holders switch auto-renew off from
this process, through the service the page calls:

- R is switched off the moment the batch is sent: the switch and R's claim race for the lock;
- A is switched off while its charge is in flight (its intent ``started``): the charge wins;
- B is switched off at the same moment, before its turn comes: the switch wins, no charge.
"""

from __future__ import annotations

import email
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from tests.support.celery_process import start_celery_worker, stop_celery_worker, worker_environment
from tests.support.charges import CHARGE_DAY, EXPIRES, mark_charge_notice_sent
from tests.support.factories import make_mailbox
from tests.support.settings import TEST_REDIS_URL, make_settings
from tests.support.waiting import wait_until
from worker.celery_setup import create_celery
from worker.gateways.sandbox import list_charges
from worker.rules import schedule
from worker.rules.auto_renew import UNRESOLVED
from worker.services import auto_renew_switch as switch
from worker.services.auto_renew_switch import Outcome
from worker.store.models import ChargeIntent, Mailbox

pytestmark = pytest.mark.slow

RENEWED = schedule.add_years(EXPIRES, 1)


@pytest.fixture
def celery_worker_process(tmp_path, database_url, smtp_server):
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    env = worker_environment(tmp_path, database_url, smtp_server, sandbox_latency_ms=1500, gateway_concurrency=1)
    process = start_celery_worker(env, tmp_path)
    yield process
    stop_celery_worker(process)


def _due_auto_renew(session_factory, address: str) -> int:
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session, expires_on=EXPIRES, address=address, auto_renew=True, payment_method="pm_card_visa"
        )
        mailbox.next_action_on = CHARGE_DAY
        session.flush()
        mark_charge_notice_sent(session, mailbox)
        return mailbox.id


def _intents(session_factory, mailbox_id: int) -> list[ChargeIntent]:
    with session_factory() as session:
        return list(session.scalars(select(ChargeIntent).where(ChargeIntent.mailbox_id == mailbox_id)))


def _off(session_factory, mailbox_id: int) -> switch.SwitchResult:
    return switch.switch_off(
        session_factory, mailbox_id, seen_expires_on=EXPIRES, today=CHARGE_DAY, stages=schedule.DEFAULT_STAGES
    )


def test_switching_off_against_the_charge_one_charge_or_none(
    session_factory, celery_worker_process, smtp_server, tmp_path
):
    raced = _due_auto_renew(session_factory, "r@pec.provider.example.it")
    in_flight = _due_auto_renew(session_factory, "a@pec.provider.example.it")
    waiting = _due_auto_renew(session_factory, "b@pec.provider.example.it")
    app = create_celery(make_settings(tmp_path, broker_url=TEST_REDIS_URL))

    app.send_task("pec_renewal.charge_batch", args=[[raced, in_flight, waiting], CHARGE_DAY.isoformat()])
    outcomes = {raced: _off(session_factory, raced).outcome}
    wait_until(
        lambda: any(intent.status == "started" for intent in _intents(session_factory, in_flight)),
        timeout=90,
        what="the second mailbox's charge in flight",
    )
    outcomes[in_flight] = _off(session_factory, in_flight).outcome
    outcomes[waiting] = _off(session_factory, waiting).outcome
    assert outcomes[in_flight] is Outcome.CHARGE_RUNNING
    assert outcomes[waiting] is Outcome.SWITCHED_OFF
    assert outcomes[raced] in (Outcome.SWITCHED_OFF, Outcome.CHARGE_RUNNING)

    def settled() -> bool:
        with session_factory() as session:
            renewed = session.get_one(Mailbox, in_flight).expires_on == RENEWED
            open_intents = session.scalars(select(ChargeIntent).where(ChargeIntent.status.in_(UNRESOLVED))).all()
        return renewed and not open_intents

    wait_until(settled, timeout=60, what="the charge in flight to be recorded")
    # The batch queues its receipts' delivery once it has looked at its last mailbox: from then
    # on nothing more moves.
    charged = [mailbox_id for mailbox_id, outcome in outcomes.items() if outcome is Outcome.CHARGE_RUNNING]
    wait_until(
        lambda: len(smtp_server.messages) >= len(charged), timeout=60, what="the receipts, sent after the whole batch"
    )
    charges = list_charges(session_factory)
    for mailbox_id in (raced, in_flight, waiting):
        mine = [c for c in charges if c["idempotency_key"].startswith(f"renewal:{mailbox_id}:")]
        intents = _intents(session_factory, mailbox_id)
        with session_factory() as session:
            stored = session.get_one(Mailbox, mailbox_id, options=[selectinload(Mailbox.schedule)])
        assert len(mine) <= 1 and len(intents) <= 1, mailbox_id
        assert all(intent.status == "succeeded" for intent in intents), mailbox_id
        if outcomes[mailbox_id] is Outcome.CHARGE_RUNNING:  # the charge won: one charge, the expiry moved
            assert [c["outcome"] for c in mine] == ["succeeded"]
            assert (stored.auto_renew, stored.expires_on) == (True, RENEWED)
            assert stored.next_action_on == RENEWED - timedelta(days=30)  # the next cycle's charge notice
        else:  # the switch won: no charge, the manual schedule from today's -7d stage
            assert mine == [] and intents == []
            assert (stored.auto_renew, stored.expires_on, stored.next_action_on) == (False, EXPIRES, CHARGE_DAY)
    receipts = [email.message_from_bytes(message.data) for message in smtp_server.messages]
    assert sorted(message["X-PEC-Renewal-Kind"] for message in receipts) == ["charge-succeeded"] * len(charged)
